"""What criproxy knows of a pod sandbox, as plain dataclasses persisted as JSON.

The JSON lives in the pause container's record in containerd (an extension), written on
every state change, so a restarted criproxy rebuilds every sandbox from containerd alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from criproxy import records
from criproxy.oci.container import (  # noqa: TC001 (records resolves hints)
    ContainerResources,
    UsernsConfig,
)

NamespaceMode = Literal["pod", "container", "node", "target"]
SandboxState = Literal["creating", "ready", "notready"]

EXTENSION = "sandbox"
"""The name of criproxy's extension on the pause container record."""
KIND_LABEL = "io.criproxy.kind"
SANDBOX_ID_LABEL = "io.criproxy.sandbox-id"


@dataclass(frozen=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0

    @property
    def reservation(self) -> str:
        """The key that makes a pod's name unique (as the kubelet builds its names)."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


@dataclass(frozen=True)
class PortMappingConfig:
    protocol: str
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSecurity:
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    readonly_rootfs: bool = False
    seccomp: str = ""
    """`""`/`unconfined`, `runtime/default`, or `localhost/<path>`."""
    selinux_label: str = ""
    """`user:role:type:level` from the pod's SELinux options; "" for none."""
    userns: UsernsConfig | None = None
    """The pod's own user namespace (mode POD); None: the host's."""


@dataclass(frozen=True)
class PodConfig:
    """The parts of CRI's PodSandboxConfig criproxy acts on, validated."""

    metadata: PodMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DnsSettings | None = None
    port_mappings: tuple[PortMappingConfig, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    network: NamespaceMode = "pod"
    pid: NamespaceMode = "container"
    ipc: NamespaceMode = "pod"
    security: PodSecurity = field(default_factory=PodSecurity)

    @property
    def host_network(self) -> bool:
        return self.network == "node"


@dataclass(frozen=True)
class Sandbox:
    """One pod sandbox; replaced (never mutated) on every change, then persisted."""

    id: str
    config: PodConfig
    runtime_handler: str
    image: str
    """The pause image reference."""
    created_at_ns: int
    state: SandboxState = "creating"
    netns: str = ""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    pid: int = 0
    exit_code: int = 0
    exited_at_ns: int = 0
    files_dir: str = ""
    shm: str = ""
    userns: str = ""
    """The pinned user namespace of a pod with one of its own."""
    overhead: ContainerResources | None = None
    resources: ContainerResources | None = None
    """The pod's overhead and resources as last given by UpdatePodSandboxResources."""

    def with_changes(self, **changes: Any) -> Sandbox:
        return replace(self, **changes)

    def to_json(self) -> bytes:
        return records.to_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Sandbox:
        """Keys this version does not know (a newer criproxy wrote them) are ignored."""
        return records.from_json(cls, raw)
