"""What the sandbox call modules share: one small object, made once by the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from criproxy.config import NriSection
from criproxy.network.cni import CniRequest, DnsConfig, PortMapping, parse_bandwidth_annotations
from criproxy.nri.adaptation import Nri
from criproxy.sandbox.model import EXTENSION

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from criproxy.config import Config
    from criproxy.containerd import Containerd
    from criproxy.images.service import ImageService
    from criproxy.network.cni import Cni
    from criproxy.sandbox.loop import PodLoops
    from criproxy.sandbox.model import Sandbox
    from criproxy.store import SandboxStore


STATE_MOUNTS = ("shm", "userns")
"""What criproxy mounts in a sandbox's state dir."""
STOP_TIMEOUT = 10.0
"""How long a SIGKILLed pause task may take to exit."""


@dataclass(frozen=True)
class PodPaths:
    netns_dir: Path
    """Pinned network namespaces, one per pod."""
    state_dir: Path
    """Per pod: /dev/shm, the pinned user namespace, the set-up intent."""
    files_root: Path
    """Per pod: hostname, hosts, resolv.conf."""
    idmap_root: Path
    """Idmapped rootfs layers of pods with a user namespace (pods' and containers')."""

    @classmethod
    def of(cls, config: Config) -> PodPaths:
        return cls(
            netns_dir=config.state / "netns",
            state_dir=config.state / "sandboxes",
            files_root=config.root / "sandboxes",
            idmap_root=config.state / "idmap",
        )


@dataclass
class PodDeps:
    config: Config
    containerd: Containerd
    images: ImageService
    cni: Cni
    store: SandboxStore
    loops: PodLoops
    paths: PodPaths
    before_stop: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    """Called with a pod's id before it stops (its containers stop first)."""
    before_remove: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    """Called with a pod's id before it goes (its containers go first)."""
    tasks_deleted: set[str] = field(default_factory=set)
    """Pods whose pause task a stop deleted (their remove need not look for it again)."""
    nri: Nri = field(default_factory=lambda: Nri(NriSection(disable=True), "", _nothing))
    """The NRI plugins (the server's, once it is built)."""

    async def persist(self, sandbox: Sandbox) -> None:
        """Write the sandbox into its pause container's record, then into memory."""
        await self.containerd.containers.set_extensions(sandbox.id, {EXTENSION: sandbox.to_json()})
        self.store.put(sandbox)


def cni_request(sandbox: Sandbox) -> CniRequest:
    """The pod's CNI call: the kubelet's CNI_ARGS, its port mappings, bandwidth and DNS."""
    pod = sandbox.config
    meta = pod.metadata
    return CniRequest(
        container_id=sandbox.id,
        netns=sandbox.netns,
        args={
            "IgnoreUnknown": "1",
            "K8S_POD_NAMESPACE": meta.namespace,
            "K8S_POD_NAME": meta.name,
            "K8S_POD_INFRA_CONTAINER_ID": sandbox.id,
            "K8S_POD_UID": meta.uid,
        },
        port_mappings=tuple(
            PortMapping(p.host_port, p.container_port, p.protocol, p.host_ip)
            for p in pod.port_mappings
            if p.host_port > 0
        ),
        bandwidth=parse_bandwidth_annotations(pod.annotations),
        dns=DnsConfig(pod.dns.servers, pod.dns.searches, pod.dns.options) if pod.dns else None,
        loopback=False,  # criproxy's netns creation brings lo up
    )


def _nothing() -> tuple[list[Any], list[Any]]:
    return [], []
