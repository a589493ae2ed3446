"""CRI container messages <-> the containers domain: validation in, views out.

Validation happens here, before anything is created: a bad request is INVALID_ARGUMENT
naming the field and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import TYPE_CHECKING

from criproxy import cdi
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containers.model import REASON_COMPLETED, REASON_ERROR
from criproxy.cri.convert.resources import linux_resources_view
from criproxy.cri.convert.sandbox import (
    id_mappings,
    legacy_profile,
    namespace_mode,
    security_profile,
    selinux_label,
    userns_config,
)
from criproxy.errors import InvalidArgument
from criproxy.oci.container import (
    BIND_OPTIONS,
    ContainerConfig,
    ContainerResources,
    ContainerSecurity,
    DeviceConfig,
    HugepageLimit,
    MountConfig,
    Propagation,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from criproxy.containers.model import Container

_PROPAGATION: dict[int, Propagation] = {
    api_pb2.PROPAGATION_PRIVATE: "private",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}
_PROPAGATION_VALUES = {v: k for k, v in _PROPAGATION.items()}
_CONTEXT = "config.linux.security_context"
_STATES = {
    "created": api_pb2.CONTAINER_CREATED,
    "running": api_pb2.CONTAINER_RUNNING,
    "exited": api_pb2.CONTAINER_EXITED,
    "unknown": api_pb2.CONTAINER_UNKNOWN,
}


def _mount(i: int, m: api_pb2.Mount) -> MountConfig:
    field = f"config.mounts[{i}]"
    if not m.container_path:
        raise InvalidArgument(f"{field}.container_path is required")
    if not m.host_path and not (m.HasField("image") and m.image.image):
        raise InvalidArgument(f"{field}.host_path is required")
    propagation = _PROPAGATION.get(m.propagation)
    if propagation is None:
        raise InvalidArgument(f"{field}.propagation {m.propagation} is unknown")
    if m.recursive_read_only:
        if not m.readonly:
            raise InvalidArgument(
                f"{field}: recursive_read_only needs readonly (mount {m.container_path!r})"
            )
        if propagation != "private":
            raise InvalidArgument(
                f"{field}: recursive_read_only needs private propagation "
                f"(mount {m.container_path!r} has {propagation})"
            )
    unknown = [o for o in m.mount_options if o not in BIND_OPTIONS]
    if unknown:
        raise InvalidArgument(
            f"{field}.mount_options {unknown} not supported on mount {m.container_path!r} "
            f"(supported: {', '.join(BIND_OPTIONS)})"
        )
    return MountConfig(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=propagation,
        recursive_read_only=m.recursive_read_only,
        uid_mappings=id_mappings(m.uidMappings),
        gid_mappings=id_mappings(m.gidMappings),
        image=m.image.image if m.HasField("image") else "",
        image_sub_path=m.image_sub_path,
        options=tuple(dict.fromkeys(m.mount_options)),
    )


def resources(
    r: api_pb2.LinuxContainerResources, field: str = "config.linux.resources"
) -> ContainerResources:
    """LinuxContainerResources (of a ContainerConfig or an update), validated."""
    for name, value, least in (
        ("cpu_period", r.cpu_period, 0),
        ("cpu_quota", r.cpu_quota, -1),
        ("cpu_shares", r.cpu_shares, 0),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes, 0),
    ):
        if value < least:
            raise InvalidArgument(f"{field}.{name} {value} is less than {least}")
    return ContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple(HugepageLimit(h.page_size, h.limit) for h in r.hugepage_limits),
        unified=dict(r.unified),
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def _capability_names(names: Iterable[str], field: str) -> tuple[str, ...]:
    out = []
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise InvalidArgument(f"{field}: {name!r} is not a capability name")
        upper = name.upper()
        out.append(upper if upper == "ALL" or upper.startswith("CAP_") else f"CAP_{upper}")
    return tuple(out)


def _profile(
    profile: api_pb2.SecurityProfile | None, legacy: str, name: str, legacy_name: str
) -> str:
    """The seccomp or AppArmor profile, else its deprecated string field; an Unconfined
    profile given beside a string takes the string."""
    if profile is not None:
        value = security_profile(profile, f"{_CONTEXT}.{name}")
        if value != "unconfined" or not legacy:
            return value
    return legacy_profile(legacy, f"{_CONTEXT}.{legacy_name}")


def _security(ctx: api_pb2.LinuxContainerSecurityContext) -> ContainerSecurity:
    options = ctx.namespace_options
    field = f"{_CONTEXT}.namespace_options"
    pid = namespace_mode(options.pid, f"{field}.pid")
    if pid == "target" and not options.target_id:
        raise InvalidArgument("namespace_options.target_id is required with pid mode TARGET")
    caps = ctx.capabilities
    return ContainerSecurity(
        privileged=ctx.privileged,
        add_capabilities=_capability_names(caps.add_capabilities, "capabilities.add"),
        drop_capabilities=_capability_names(caps.drop_capabilities, "capabilities.drop"),
        add_ambient_capabilities=_capability_names(
            caps.add_ambient_capabilities, "capabilities.add_ambient"
        ),
        run_as_user=ctx.run_as_user.value if ctx.HasField("run_as_user") else None,
        run_as_group=ctx.run_as_group.value if ctx.HasField("run_as_group") else None,
        run_as_username=ctx.run_as_username,
        readonly_rootfs=ctx.readonly_rootfs,
        supplemental_groups=tuple(ctx.supplemental_groups),
        supplemental_groups_policy=(
            "strict" if ctx.supplemental_groups_policy == api_pb2.Strict else "merge"
        ),
        no_new_privs=ctx.no_new_privs,
        # As containerd: exactly the lists given (the kubelet sends the defaults for the
        # Default proc mount and none for Unmasked); nothing given means none.
        masked_paths=tuple(ctx.masked_paths),
        readonly_paths=tuple(ctx.readonly_paths),
        seccomp=_profile(
            ctx.seccomp if ctx.HasField("seccomp") else None,
            ctx.seccomp_profile_path,
            "seccomp",
            "seccomp_profile_path",
        ),
        apparmor=_profile(
            ctx.apparmor if ctx.HasField("apparmor") else None,
            ctx.apparmor_profile,
            "apparmor",
            "apparmor_profile",
        ),
        selinux_process_label=selinux_label(ctx),
        pid=pid,
        target_id=options.target_id,
        ipc=namespace_mode(options.ipc, f"{field}.ipc"),
        network=namespace_mode(options.network, f"{field}.network"),
        userns=userns_config(options, field),
    )


_SIGNAL_PREFIX = "SIGNAL_"
"""CRI's Signal values are `SIGNAL_` and the signal's name (`SIGNAL_SIGRTMINPLUS3`); a
container keeps the signal's name alone (`SIGRTMINPLUS3`), as records always have."""


def _stop_signal(value: int) -> str:
    if value == api_pb2.SIGNAL_RUNTIME_DEFAULT:
        return ""
    try:
        return api_pb2.Signal.Name(value).removeprefix(_SIGNAL_PREFIX)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"config.stop_signal {value} is not a signal") from None


def _stop_signal_value(name: str) -> api_pb2.Signal.ValueType:
    try:
        return api_pb2.Signal.Value(_SIGNAL_PREFIX + name)
    except ValueError:
        return api_pb2.SIGNAL_RUNTIME_DEFAULT


def container_config(config: api_pb2.ContainerConfig) -> ContainerConfig:
    """Validate a ContainerConfig into the domain's ContainerConfig."""
    if not config.HasField("metadata"):
        raise InvalidArgument("config.metadata is required")
    if not config.metadata.name:
        raise InvalidArgument("config.metadata.name is required")
    if not config.HasField("image") or not config.image.image:
        raise InvalidArgument("config.image.image is required")
    if config.log_path:
        clean = posixpath.normpath(config.log_path)
        if posixpath.isabs(config.log_path) or clean == ".." or clean.startswith("../"):
            raise InvalidArgument(
                f"config.log_path {config.log_path!r} must stay inside the pod's log directory"
            )
    envs = []
    for i, env in enumerate(config.envs):
        if not env.key:
            raise InvalidArgument(f"config.envs[{i}].key is required")
        try:
            envs.append((env.key, env.value.decode()))
        except UnicodeDecodeError:
            raise InvalidArgument(f"config.envs[{i}] ({env.key}) is not UTF-8") from None
    devices = []
    for i, d in enumerate(config.devices):
        if not d.container_path or not d.host_path:
            raise InvalidArgument(f"config.devices[{i}] needs container_path and host_path")
        perms = d.permissions or "rwm"
        if set(perms) - set("rwm"):
            raise InvalidArgument(f"config.devices[{i}].permissions {perms!r} is not of r, w, m")
        devices.append(DeviceConfig(d.container_path, d.host_path, perms))
    cdi_devices = [d.name for d in config.CDI_devices]
    cdi_devices += cdi.annotated_devices(config.annotations)
    for name in cdi_devices:
        try:
            cdi.parse_name(name)
        except cdi.CdiError as err:
            raise InvalidArgument(f"config.CDI_devices: {err}") from None
    linux = config.linux
    return ContainerConfig(
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        image=config.image.image,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple(envs),
        mounts=tuple(_mount(i, m) for i, m in enumerate(config.mounts)),
        devices=tuple(devices),
        cdi_devices=tuple(dict.fromkeys(cdi_devices)),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        resources=resources(linux.resources) if linux.HasField("resources") else None,
        security=_security(linux.security_context),
        stop_signal=_stop_signal(config.stop_signal),
    )


# --- views ----------------------------------------------------------------------------


def _metadata(c: Container) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=c.config.name, attempt=c.config.attempt)


def _state(c: Container) -> int:
    return _STATES[c.state]


def to_container(c: Container) -> api_pb2.Container:
    return api_pb2.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=_metadata(c),
        # as the request named it, as containerd lists it (the status gives the repo tag)
        image=api_pb2.ImageSpec(image=c.config.image, user_specified_image=c.config.image),
        image_ref=c.image.id,
        state=_state(c),  # type: ignore[arg-type]
        created_at=c.created_at_ns,
        labels=c.config.labels,
        annotations=c.config.annotations,
        image_id=c.image.id,
    )


def _reason(c: Container) -> str:
    if c.state != "exited" or c.reason:
        return c.reason
    return REASON_COMPLETED if c.exit_code == 0 else REASON_ERROR


def _resources_view(r: ContainerResources | None) -> api_pb2.ContainerResources | None:
    if r is None:
        return None
    return api_pb2.ContainerResources(linux=linux_resources_view(r))


def _mount_view(m: MountConfig) -> api_pb2.Mount:
    return api_pb2.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=_PROPAGATION_VALUES[m.propagation],  # type: ignore[arg-type]
        recursive_read_only=m.recursive_read_only,
        uidMappings=[
            api_pb2.IDMapping(container_id=x.container_id, host_id=x.host_id, length=x.length)
            for x in m.uid_mappings
        ],
        gidMappings=[
            api_pb2.IDMapping(container_id=x.container_id, host_id=x.host_id, length=x.length)
            for x in m.gid_mappings
        ],
        image=api_pb2.ImageSpec(image=m.image, image_ref=m.image_ref) if m.image else None,
        image_sub_path=m.image_sub_path,
        mount_options=m.options,
    )


def to_status(c: Container) -> api_pb2.ContainerStatus:
    started = c.started_at_ns if c.state in ("running", "exited", "unknown") else 0
    finished = c.finished_at_ns if c.state in ("exited", "unknown") else 0
    user = None
    if c.user is not None:
        user = api_pb2.ContainerUser(
            linux=api_pb2.LinuxContainerUser(
                uid=c.user.uid, gid=c.user.gid, supplemental_groups=c.user.supplemental_groups
            )
        )
    return api_pb2.ContainerStatus(
        id=c.id,
        metadata=_metadata(c),
        state=_state(c),  # type: ignore[arg-type]
        created_at=c.created_at_ns,
        started_at=started,
        finished_at=finished,
        exit_code=c.exit_code,
        image=api_pb2.ImageSpec(image=c.image.name, user_specified_image=c.config.image),
        image_ref=c.image.ref,
        image_id=c.image.id,
        reason=_reason(c),
        message=c.message,
        labels=c.config.labels,
        annotations=c.config.annotations,
        mounts=[_mount_view(m) for m in c.config.mounts],
        log_path=c.log_path,
        resources=_resources_view(c.config.resources),
        user=user,
        stop_signal=_stop_signal_value(c.stop_signal),
    )


def verbose_info(
    c: Container,
    spec: dict[str, object] | None,
    runtime_type: str,
    *,
    snapshotter: str = "",
    runtime_options: dict[str, object] | None = None,
) -> dict[str, str]:
    """containerd's CRI gives one `info` JSON; these are its keys criproxy has."""
    info = {
        "sandboxID": c.sandbox_id,
        "pid": c.pid,
        "removing": False,
        "snapshotKey": c.id,
        "runtimeType": runtime_type,
        "config": dataclasses.asdict(c.config),
        "runtimeSpec": spec,
        "snapshotter": snapshotter,
        "runtimeOptions": runtime_options,
    }
    return {"info": json.dumps(info, sort_keys=True)}


def matches(c: Container, flt: api_pb2.ContainerFilter, resolved_id: str) -> bool:
    if flt.id and c.id != resolved_id:
        return False
    if flt.pod_sandbox_id and not c.sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    if flt.HasField("state") and _state(c) != flt.state.state:
        return False
    return all(c.config.labels.get(k) == v for k, v in flt.label_selector.items())
