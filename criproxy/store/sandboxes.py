"""The pod sandboxes criproxy knows, their names, and the setups still under way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition
from criproxy.store.index import GatedIndex
from criproxy.store.names import NameRegistrar

if TYPE_CHECKING:
    from criproxy.errors import CriproxyError
    from criproxy.sandbox.model import Sandbox
    from criproxy.store.gate import RecoveredGate


@dataclass
class PodSetup:
    """A RunPodSandbox under way, or finished but not yet answered: a retry of the same
    pod waits for it and gets its id (never a second pod)."""

    id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    error: CriproxyError | None = None


class SandboxStore(GatedIndex["Sandbox"]):
    def __init__(self, gate: RecoveredGate) -> None:
        super().__init__(gate, "pod sandbox", "pod_sandbox_id")
        self.names = NameRegistrar("pod sandbox")
        self.setups: dict[str, PodSetup] = {}
        """By sandbox id, from the first RunPodSandbox until an answer was delivered."""

    # --- queries (memory only: never wait on containerd or CNI) ------------------------

    def ready(self, sandbox_id: str) -> Sandbox:
        """A READY pod (containers and port-forwards need one): NOT_FOUND or
        FAILED_PRECONDITION otherwise."""
        sandbox = self.get(sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        return sandbox

    def pods(self) -> list[Sandbox]:
        """The pods List answers with (one being set up is not listed yet)."""
        self.gate.require()
        return [s for s in self.index if s.state != "creating"]

    def pods_if_ready(self) -> list[Sandbox]:
        """Every pod, or none before the first recovery (background work)."""
        return self.index.values() if self.gate.is_open else []

    # --- changes ------------------------------------------------------------------------

    def put(self, sandbox: Sandbox) -> None:
        """Add or replace; the name is reserved by whoever makes or recovers the pod."""
        self.index.put(sandbox)

    def remove(self, sandbox_id: str) -> None:
        self.index.pop(sandbox_id)
        self.names.release(sandbox_id)
        self.setups.pop(sandbox_id, None)
