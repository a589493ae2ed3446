"""CRI pod sandbox messages <-> the sandbox domain: validation on the way in, views out.

Validation happens here, before anything is created: a bad request is INVALID_ARGUMENT
naming the field and leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.resources import resources_json
from criproxy.errors import InvalidArgument
from criproxy.oci.container import UsernsConfig
from criproxy.oci.spec import IdMapping
from criproxy.sandbox.model import (
    DnsSettings,
    NamespaceMode,
    PodConfig,
    PodMetadata,
    PodSecurity,
    PortMappingConfig,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from criproxy.sandbox.model import Sandbox

MODES: dict[int, NamespaceMode] = {
    api_pb2.POD: "pod",
    api_pb2.CONTAINER: "container",
    api_pb2.NODE: "node",
    api_pb2.TARGET: "target",
}
_MODE_VALUES = {mode: value for value, mode in MODES.items()}


def namespace_mode(value: int, field: str) -> NamespaceMode:
    """A NamespaceMode enum value; one the API does not define is INVALID_ARGUMENT."""
    mode = MODES.get(value)
    if mode is None:
        raise InvalidArgument(f"{field} {value} is not a namespace mode")
    return mode


_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
_SYSCTL = re.compile(r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")
_IPC_SYSCTL_NAMES = (
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
)
_NAMESPACED_PREFIXES = ("net.", "fs.mqueue.")


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


def _sysctls(raw: dict[str, str], network: NamespaceMode, ipc: NamespaceMode) -> dict[str, str]:
    out = {}
    for name, value in raw.items():
        if not _SYSCTL.match(name):
            raise InvalidArgument(f"config.linux.sysctls: {name!r} is not a sysctl name")
        key = name.replace("/", ".")
        ipc_sysctl = key in _IPC_SYSCTL_NAMES or key.startswith("fs.mqueue.")
        if not ipc_sysctl and not key.startswith(_NAMESPACED_PREFIXES):
            raise InvalidArgument(
                f"config.linux.sysctls: {name!r} is not namespaced; a pod may not set it"
            )
        if key.startswith("net.") and network == "node":
            raise InvalidArgument(
                f"config.linux.sysctls: {name!r} cannot be set with the host network"
            )
        if ipc_sysctl and ipc == "node":
            raise InvalidArgument(
                f"config.linux.sysctls: {name!r} cannot be set with the host IPC namespace"
            )
        out[name] = value
    return out


def _ports(mappings: list[api_pb2.PortMapping]) -> tuple[PortMappingConfig, ...]:
    out = []
    for i, port in enumerate(mappings):
        field = f"config.port_mappings[{i}]"
        if not 1 <= port.container_port <= 65535:
            raise InvalidArgument(f"{field}.container_port {port.container_port} is not 1-65535")
        if not 0 <= port.host_port <= 65535:
            raise InvalidArgument(f"{field}.host_port {port.host_port} is not 0-65535")
        if port.protocol not in _PROTOCOLS:
            raise InvalidArgument(f"{field}.protocol {port.protocol} is unknown")
        if port.host_ip:
            try:
                ipaddress.ip_address(port.host_ip)
            except ValueError:
                raise InvalidArgument(f"{field}.host_ip {port.host_ip!r} is not an IP") from None
        out.append(
            PortMappingConfig(
                _PROTOCOLS[port.protocol], port.container_port, port.host_port, port.host_ip
            )
        )
    return tuple(out)


def _dns(config: api_pb2.PodSandboxConfig) -> DnsSettings | None:
    if not config.HasField("dns_config"):
        return None
    dns = config.dns_config
    for i, server in enumerate(dns.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(
                f"config.dns_config.servers[{i}] {server!r} is not an IP address"
            ) from None
    for i, option in enumerate(dns.options):
        if not option or any(c.isspace() for c in option):
            raise InvalidArgument(f"config.dns_config.options[{i}] {option!r} is not an option")
    for i, search in enumerate(dns.searches):
        if not search or any(c.isspace() for c in search):
            raise InvalidArgument(f"config.dns_config.searches[{i}] {search!r} is not a domain")
    return DnsSettings(tuple(dns.servers), tuple(dns.searches), tuple(dns.options))


def selinux_label(
    ctx: api_pb2.LinuxSandboxSecurityContext | api_pb2.LinuxContainerSecurityContext,
) -> str:
    if not ctx.HasField("selinux_options"):
        return ""
    o = ctx.selinux_options
    parts = [o.user, o.role, o.type, o.level]
    return ":".join(parts) if any(parts) else ""


def security_profile(profile: api_pb2.SecurityProfile, field: str) -> str:
    """A SecurityProfile as criproxy names it: `runtime/default`, `localhost/<ref>` or
    `unconfined`."""
    kind = profile.profile_type
    if kind == api_pb2.SecurityProfile.RuntimeDefault:
        return "runtime/default"
    if kind == api_pb2.SecurityProfile.Localhost:
        if not profile.localhost_ref:
            raise InvalidArgument(f"{field}: a Localhost profile needs localhost_ref")
        return f"localhost/{profile.localhost_ref}"
    if kind == api_pb2.SecurityProfile.Unconfined:
        return "unconfined"
    raise InvalidArgument(f"{field}.profile_type {kind} is unknown")


def legacy_profile(value: str, field: str) -> str:
    """A deprecated profile string field: `""` (unset), `unconfined`, `runtime/default` (or
    `docker/default`, its old name, as containerd reads it) or `localhost/<ref>`."""
    if value == "docker/default":
        return "runtime/default"
    if value in ("", "unconfined", "runtime/default") or (
        value.startswith("localhost/") and value != "localhost/"
    ):
        return value
    raise InvalidArgument(
        f"{field} {value!r} is not unconfined, runtime/default or localhost/<profile>"
    )


def _seccomp(ctx: api_pb2.LinuxSandboxSecurityContext) -> str:
    field = "config.linux.security_context"
    if ctx.HasField("seccomp"):
        return security_profile(ctx.seccomp, f"{field}.seccomp")
    return legacy_profile(ctx.seccomp_profile_path, f"{field}.seccomp_profile_path")


def id_mappings(items: Iterable[api_pb2.IDMapping]) -> tuple[IdMapping, ...]:
    return tuple(IdMapping(m.container_id, m.host_id, m.length) for m in items)


def userns_config(options: api_pb2.NamespaceOption, field: str) -> UsernsConfig | None:
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    mode = namespace_mode(userns.mode, f"{field}.userns_options.mode")
    if mode == "node":
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{field}.userns_options: mappings given with mode NODE")
        return None
    if mode != "pod":
        raise InvalidArgument(
            f"{field}.userns_options.mode {mode.upper()} is not supported (only POD and NODE)"
        )
    uids, gids = id_mappings(userns.uids), id_mappings(userns.gids)
    for kind, maps in (("uids", uids), ("gids", gids)):
        if len(maps) != 1:
            raise InvalidArgument(
                f"{field}.userns_options.{kind}: exactly one mapping is supported, got {len(maps)}"
            )
        if maps[0].length == 0:
            raise InvalidArgument(f"{field}.userns_options.{kind}: mapping length is 0")
    if uids[0].container_id != 0 or gids[0].container_id != 0:
        raise InvalidArgument(f"{field}.userns_options: mappings must start at container id 0")
    return UsernsConfig(uids, gids)


def pod_config(config: api_pb2.PodSandboxConfig) -> PodConfig:
    """Validate a PodSandboxConfig into the domain's PodConfig."""
    if not config.HasField("metadata"):
        raise InvalidArgument("config.metadata is required")
    meta = config.metadata
    metadata = PodMetadata(
        _required(meta.name, "config.metadata.name"),
        _required(meta.uid, "config.metadata.uid"),
        _required(meta.namespace, "config.metadata.namespace"),
        meta.attempt,
    )
    if config.log_directory and not config.log_directory.startswith("/"):
        raise InvalidArgument(
            f"config.log_directory {config.log_directory!r} must be an absolute path"
        )
    linux = config.linux
    ctx = linux.security_context
    options = ctx.namespace_options
    field = "config.linux.security_context.namespace_options"
    network = namespace_mode(options.network, f"{field}.network")
    pid = namespace_mode(options.pid, f"{field}.pid")
    ipc = namespace_mode(options.ipc, f"{field}.ipc")
    if network not in ("pod", "node"):
        raise InvalidArgument(f"namespace_options.network {network.upper()} is not POD or NODE")
    if pid not in ("pod", "container", "node"):
        raise InvalidArgument(f"namespace_options.pid {pid.upper()} is not valid for a pod")
    if ipc not in ("pod", "node"):
        raise InvalidArgument(f"namespace_options.ipc {ipc.upper()} is not POD or NODE")
    userns = userns_config(options, "config.linux.security_context.namespace_options")
    if userns is not None and "node" in (network, pid, ipc):
        raise InvalidArgument(
            "a pod with its own user namespace cannot use the host's network, PID or IPC namespace"
        )
    if config.hostname and len(config.hostname) > 64:
        raise InvalidArgument("config.hostname is longer than 64 characters")
    return PodConfig(
        metadata=metadata,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=_dns(config),
        port_mappings=_ports(list(config.port_mappings)),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=linux.cgroup_parent,
        sysctls=_sysctls(dict(linux.sysctls), network, ipc),
        network=network,
        pid=pid,
        ipc=ipc,
        security=PodSecurity(
            run_as_user=ctx.run_as_user.value if ctx.HasField("run_as_user") else None,
            run_as_group=ctx.run_as_group.value if ctx.HasField("run_as_group") else None,
            supplemental_groups=tuple(ctx.supplemental_groups),
            privileged=ctx.privileged,
            readonly_rootfs=ctx.readonly_rootfs,
            seccomp=_seccomp(ctx),
            selinux_label=selinux_label(ctx),
            userns=userns,
        ),
    )


def _metadata(sandbox: Sandbox) -> api_pb2.PodSandboxMetadata:
    meta = sandbox.config.metadata
    return api_pb2.PodSandboxMetadata(
        name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=meta.attempt
    )


def _state(sandbox: Sandbox) -> int:
    return api_pb2.SANDBOX_READY if sandbox.state == "ready" else api_pb2.SANDBOX_NOTREADY


def to_pod_sandbox(sandbox: Sandbox) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(
        id=sandbox.id,
        metadata=_metadata(sandbox),
        state=_state(sandbox),  # type: ignore[arg-type]
        created_at=sandbox.created_at_ns,
        labels=sandbox.config.labels,
        annotations=sandbox.config.annotations,
        runtime_handler=sandbox.runtime_handler,
    )


def to_status(sandbox: Sandbox) -> api_pb2.PodSandboxStatus:
    pod = sandbox.config
    return api_pb2.PodSandboxStatus(
        id=sandbox.id,
        metadata=_metadata(sandbox),
        state=_state(sandbox),  # type: ignore[arg-type]
        created_at=sandbox.created_at_ns,
        # Once the pod's netns is gone (stopped), its IP may already be another pod's.
        network=api_pb2.PodSandboxNetworkStatus(
            ip=sandbox.ip if sandbox.netns else "",
            additional_ips=[api_pb2.PodIP(ip=ip) for ip in sandbox.additional_ips]
            if sandbox.netns
            else [],
        ),
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(
                options=api_pb2.NamespaceOption(
                    network=_MODE_VALUES[pod.network],  # type: ignore[arg-type]
                    pid=_MODE_VALUES[pod.pid],  # type: ignore[arg-type]
                    ipc=_MODE_VALUES[pod.ipc],  # type: ignore[arg-type]
                )
            )
        ),
        labels=pod.labels,
        annotations=pod.annotations,
        runtime_handler=sandbox.runtime_handler,
    )


def verbose_info(sandbox: Sandbox) -> dict[str, str]:
    """containerd's CRI gives one `info` JSON; these are its keys criproxy has."""
    info = {
        "pid": sandbox.pid,
        "processStatus": "running" if sandbox.state == "ready" else "stopped",
        "netNamespacePath": sandbox.netns,
        "netNamespaceClosed": not sandbox.netns,
        "image": sandbox.image,
        "snapshotKey": sandbox.id,
        "runtimeHandler": sandbox.runtime_handler,
        "cniResult": cni_result_view(sandbox.cni_result),
        "sandboxFiles": sandbox.files_dir,
        "shm": sandbox.shm,
        "overhead": resources_json(sandbox.overhead),
        "resources": resources_json(sandbox.resources),
    }
    return {"info": json.dumps(info, sort_keys=True)}


def cni_result_view(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A CNI result in the shape containerd's CRI shows it (`Interfaces.<name>.IPConfigs`),
    which scripts reading `crictl inspectp` rely on."""
    if result is None:
        return None
    interfaces = result.get("interfaces") or []
    view: dict[str, dict[str, Any]] = {
        str(i.get("name", "")): {
            "IPConfigs": [],
            "Mac": i.get("mac", ""),
            "Sandbox": i.get("sandbox", ""),
            "PciID": i.get("pciID", ""),
            "SocketPath": i.get("socketPath", ""),
        }
        for i in interfaces
    }
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            name = str(interfaces[index].get("name", ""))
            view[name]["IPConfigs"].append(
                {"IP": str(ip.get("address", "")).split("/")[0], "Gateway": ip.get("gateway", "")}
            )
    dns = result.get("dns") or {}
    return {
        "Interfaces": view,
        "DNS": [
            {
                "Nameservers": dns.get("nameservers"),
                "Domain": dns.get("domain", ""),
                "Search": dns.get("search"),
                "Options": dns.get("options"),
            }
        ]
        if dns
        else [],
        "Routes": [{"dst": r.get("dst"), "gw": r.get("gw")} for r in result.get("routes") or []],
    }


def matches(sandbox: Sandbox, flt: api_pb2.PodSandboxFilter, resolved_id: str) -> bool:
    """`resolved_id`: the filter's id (a unique prefix) resolved to a full id, as containerd
    does; an id filter that resolves to nothing matches nothing."""
    if flt.id and sandbox.id != resolved_id:
        return False
    if flt.HasField("state") and _state(sandbox) != flt.state.state:
        return False
    return all(sandbox.config.labels.get(k) == v for k, v in flt.label_selector.items())
