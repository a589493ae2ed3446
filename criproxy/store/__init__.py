"""The in-memory indexes that List and Status answer from, rebuilt from containerd by
`criproxy.recovery`: records by id with id-prefix lookup, the name registrar, pod
membership, and the gate that holds queries until the first recovery has run."""

from criproxy.store.containers import ContainerStore
from criproxy.store.gate import RecoveredGate
from criproxy.store.index import GatedIndex, Index
from criproxy.store.names import NameRegistrar
from criproxy.store.sandboxes import PodSetup, SandboxStore

__all__ = [
    "ContainerStore",
    "GatedIndex",
    "Index",
    "NameRegistrar",
    "PodSetup",
    "RecoveredGate",
    "SandboxStore",
]
