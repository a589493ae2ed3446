"""The OCI runtime spec of a CRI container, as containerd's CRI plugin builds it.

`container_spec` is a pure function of a `ContainerSpecInput`: the CRI config (already
validated into the dataclasses below), the image's process config, the pod it joins, and
the host facts the caller read (capabilities criproxy holds, its own oom_score_adj, the
image's /etc/passwd and /etc/group, a parsed seccomp profile file).

What stays with the caller, because it touches the host (containerd does it while it
builds the spec): creating missing host paths of mounts and resolving their symlinks,
checking that rshared/rslave sources are shared/slave mounts, SELinux relabelling of
mounts with `selinux_relabel`, choosing the pod's SELinux label when the container has
none, stat-ing devices, and copying image content into the VOLUME directories.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
from collections.abc import Mapping  # noqa: TC003 (records resolve these hints at runtime)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from criproxy.oci import annotations as ann
from criproxy.oci import capabilities
from criproxy.oci.defaults import (
    DEFAULT_PATH_ENV,
    DEFAULT_ROOTFS_PATH,
    default_capabilities,
    default_mounts,
    default_namespaces,
    default_spec,
)
from criproxy.oci.seccomp import default_profile
from criproxy.oci.spec import (
    DEV_SHM,
    RESOLV_CONF,
    CgroupDriver,
    IdMapping,
    ImageProcess,
    NamespaceMode,
    SpecError,
    _go_clean,
    cgroups_path,
    id_mapping,
    merge_env,
    ordered_spec,
    restrict_oom_score_adj,
)
from criproxy.oci.user import member_gids, resolve_user, user_string

if TYPE_CHECKING:
    from collections.abc import Iterable

Propagation = Literal["private", "rslave", "rshared"]
"""CRI's MountPropagation: PROPAGATION_PRIVATE, _HOST_TO_CONTAINER, _BIDIRECTIONAL."""
SupplementalGroupsPolicy = Literal["merge", "strict"]

ETC_HOSTNAME = "/etc/hostname"
ETC_HOSTS = "/etc/hosts"
APPARMOR_DEFAULT_PROFILE = "cri-containerd.apparmor.d"
"""The profile name containerd loads for RuntimeDefault (kept, so hosts' policies match)."""
RUNTIME_DEFAULT = "runtime/default"
DOCKER_DEFAULT = "docker/default"
UNCONFINED = "unconfined"
LOCALHOST_PREFIX = "localhost/"
TTY_TERM_ENV = "TERM=xterm"

_CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}
"""The cgroup filesystem, read-only (docker's behaviour that containerd keeps)."""


@dataclass(frozen=True)
class MountConfig:
    """One CRI `Mount`: a host path (or an image) bound into the container."""

    container_path: str
    host_path: str
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: Propagation = "private"
    recursive_read_only: bool = False
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    image: str = ""
    """An image volume (CRI `Mount.image`); host_path is then the image's mounted rootfs."""
    image_sub_path: str = ""
    image_ref: str = ""
    """The image volume's image id (its config digest), as ContainerStatus reports it."""
    options: tuple[str, ...] = ()
    """Per-mount flags asked for beside the bind (CRI `Mount.mount_options`): a subset of
    BIND_OPTIONS, validated on the way in."""


BIND_OPTIONS = ("noexec", "nodev", "nosuid")
"""The mount flags CRI's `Mount.mount_options` may ask for (KEP-5855): each only takes a
power away from the container, so none needs a privilege."""


@dataclass(frozen=True)
class DeviceConfig:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class HostDevice:
    """A device node as read from the host (`stat` of host_path), for the spec."""

    path: str
    """The path inside the container."""
    kind: Literal["c", "b", "p"]
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    permissions: str = "rwm"


@dataclass(frozen=True)
class HugepageLimit:
    page_size: str
    """`2MB`, `1GB`, ... as the kubelet sends it."""
    limit: int


@dataclass(frozen=True)
class ContainerResources:
    """CRI's LinuxContainerResources; 0 / "" / empty means "not set"."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0


@dataclass(frozen=True)
class UsernsConfig:
    """A pod's user namespace (CRI `UserNamespace` with mode POD)."""

    uids: tuple[IdMapping, ...] = ()
    gids: tuple[IdMapping, ...] = ()


@dataclass(frozen=True)
class ContainerSecurity:
    """CRI's LinuxContainerSecurityContext, validated."""

    privileged: bool = False
    add_capabilities: tuple[str, ...] = ()
    """Upper-case names, `CAP_` prefix as given or added; `ALL` allowed."""
    drop_capabilities: tuple[str, ...] = ()
    add_ambient_capabilities: tuple[str, ...] = ()
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = "merge"
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = ()
    """Exactly what the kubelet sent, as containerd applies it: it sends the defaults for
    the Default proc mount and nothing for Unmasked; nothing sent means no masked paths."""
    readonly_paths: tuple[str, ...] = ()
    seccomp: str = ""
    """`""`/`unconfined`, `runtime/default`, or `localhost/<path>`."""
    apparmor: str = ""
    """`""`/`unconfined`, `runtime/default`, or `localhost/<profile>`."""
    selinux_process_label: str = ""
    selinux_mount_label: str = ""
    pid: NamespaceMode = "container"
    target_id: str = ""
    ipc: NamespaceMode = "pod"
    network: NamespaceMode = "pod"
    userns: UsernsConfig | None = None


@dataclass(frozen=True)
class ContainerConfig:
    """The parts of CRI's ContainerConfig criproxy acts on, validated."""

    name: str
    attempt: int = 0
    image: str = ""
    """The image as the kubelet named it."""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountConfig, ...] = ()
    devices: tuple[DeviceConfig, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    """CDI devices (`vendor.com/class=name`): the request's and its `cdi.k8s.io/` annotations'."""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: ContainerResources | None = None
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    stop_signal: str = ""
    """A signal name such as `SIGTERM`; "" when the config names none."""


@dataclass(frozen=True)
class PodFacts:
    """What a container's spec takes from its pod."""

    id: str
    name: str
    namespace: str
    uid: str
    pid: int
    """The pause process: its namespaces are joined through /proc/<pid>/ns/*."""
    hostname: str
    """The pod's hostname (HOSTNAME env); the host's when the pod has none."""
    files_dir: str
    """Holds the pod's `hostname`, `hosts` and `resolv.conf`."""
    shm: str
    """The pod's /dev/shm tmpfs; "" when the pod uses the host's IPC namespace."""
    cgroup_parent: str = ""
    network: NamespaceMode = "pod"
    ipc: NamespaceMode = "pod"
    privileged: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    sysctls: Mapping[str, str] = field(default_factory=dict)
    userns: UsernsConfig | None = None


@dataclass(frozen=True)
class ContainerSpecInput:
    id: str
    config: ContainerConfig
    image: ImageProcess
    image_name: str
    """The image reference recorded in the annotations (the resolved name)."""
    pod: PodFacts
    target_pid: int = 0
    """For pid mode TARGET: the target container's process."""
    host_devices: tuple[HostDevice, ...] = ()
    """The config's devices, stat-ed by the caller (globbed directories expanded)."""
    all_host_devices: tuple[HostDevice, ...] = ()
    """Every device of the host, for privileged containers."""
    bounding_capabilities: tuple[str, ...] = ()
    """The capabilities criproxy itself may grant (its bounding set, `CapBnd` of
    /proc/self/status): `ALL` and privileged mean these, and
    no container gets one outside them. Empty: every known capability."""
    containerd_namespace: str = "k8s.io"
    cgroup_driver: CgroupDriver = "cgroupfs"
    cgroup_v2: bool = False
    """cgroup namespace for unprivileged containers on unified hosts only."""
    disable_cgroup: bool = False
    own_oom_score_adj: int | None = None
    """criproxy's own score when it may not lower scores; None when unrestricted."""
    seccomp_profile: Mapping[str, Any] | None = None
    """The `linux.seccomp` object of a `localhost/` profile (seccomp.parse_localhost_profile
    of the file); ignored otherwise: `runtime/default` is built here, for the container's
    own capabilities."""
    apparmor_enabled: bool = False
    etc_passwd: str | None = None
    etc_group: str | None = None
    container_annotation_patterns: tuple[str, ...] = ()
    pod_annotation_patterns: tuple[str, ...] = ()
    volume_mounts: tuple[MountConfig, ...] = ()
    """The image's VOLUMEs, already backed by host directories (containerd's CRI copies the
    image content into a per-container volume dir); CRI mounts win on the same path."""
    swap_controller: bool = False
    """Whether the host's cgroups can limit swap (containerd's SwapControllerAvailable):
    only then is swap set, to the memory limit unless the config gives its own."""
    hugetlb_controller: bool = True
    """Whether the hugetlb controller is there; without it hugepage limits are skipped
    (containerd's default `tolerate_missing_hugetlb_controller`), as runc would fail."""


class ProcessUser(NamedTuple):
    """The ids a container's process runs with (ContainerStatus.user reports them)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def effective_user(inp: ContainerSpecInput) -> ProcessUser:
    """uid, gid and additional gids of the container's process, as containerd sets them.

    The user is run_as_username/run_as_user(:run_as_group), else the image's USER, else
    root. Policy `merge` (the default) adds the primary gid, the image's /etc/group
    memberships of that user, and the supplemental groups; `strict` only the supplemental
    groups (plus the primary gid when a user is set). The result is sorted and unique,
    as containerd merges it. Raises UserError when the user cannot be resolved.
    """
    sec = inp.config.security
    userstr = user_string(sec.run_as_user, sec.run_as_group, sec.run_as_username)
    userstr = userstr or inp.image.user
    groups = {g & 0xFFFFFFFF for g in sec.supplemental_groups}
    if userstr:
        uid, gid = resolve_user(userstr, inp.etc_passwd, inp.etc_group)
        groups.add(gid)  # setting a user resets the additional gids to the primary one
    else:
        uid, gid = 0, 0
    if sec.supplemental_groups_policy == "merge":
        if sec.run_as_username:
            member = sec.run_as_username
        elif sec.run_as_user is not None:
            member = str(sec.run_as_user)
        else:
            member = inp.image.user.partition(":")[0] or "0"
        groups.add(gid)
        groups.update(member_gids(member, inp.etc_passwd, inp.etc_group))
    return ProcessUser(uid, gid, tuple(sorted(groups)))


def merge_resources(old: ContainerResources | None, new: ContainerResources) -> ContainerResources:
    """UpdateContainerResources as containerd applies it: a field the update leaves unset
    (zero or empty) keeps its previous value."""
    if old is None:
        return new
    merged = {
        f.name: getattr(new, f.name) or getattr(old, f.name)
        for f in dataclasses.fields(ContainerResources)
    }
    return ContainerResources(**merged)


def with_resources(spec: Mapping[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
    """`spec` with its cgroup limits replaced by `resources` (its device rules kept)."""
    updated = copy.deepcopy(dict(spec))
    linux = updated.setdefault("linux", {})
    devices = (linux.get("resources") or {}).get("devices")
    linux["resources"] = {**({"devices": devices} if devices else {}), **resources}
    return updated


def linux_resources(
    res: ContainerResources, *, swap_controller: bool = False, hugetlb_controller: bool = True
) -> dict[str, Any]:
    """The cgroup limits of CRI resources as an OCI LinuxResources object (no devices).

    What containerd's WithResources sets, for a new spec and for UpdateContainerResources:
    unset (zero) values are left out; swap is set only where the host can limit it, to
    the memory limit unless the kubelet gives its own; hugepage limits only with the
    hugetlb controller (containerd tolerates its absence by default; runc would fail).
    """
    resources: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if res.memory_limit_in_bytes:
        memory["limit"] = res.memory_limit_in_bytes
    swap = res.memory_swap_limit_in_bytes or res.memory_limit_in_bytes
    if swap_controller and swap:
        memory["swap"] = swap
    if memory:
        resources["memory"] = memory
    cpu = {
        key: value
        for key, value in (
            ("shares", res.cpu_shares),
            ("quota", res.cpu_quota),
            ("period", res.cpu_period),
            ("cpus", res.cpuset_cpus),
            ("mems", res.cpuset_mems),
        )
        if value
    }
    if cpu:
        resources["cpu"] = cpu
    if res.hugepage_limits and hugetlb_controller:
        resources["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits
        ]
    if res.unified:
        resources["unified"] = dict(sorted(res.unified.items()))
    return resources


def container_spec(inp: ContainerSpecInput) -> dict[str, Any]:
    """The container's OCI runtime spec (see the module docstring).

    Raises SpecError (INVALID_ARGUMENT) for what no runtime could run: no command, a
    privileged container in an unprivileged pod, a recursive read-only mount that is not
    read-only and private, a user namespace unlike the pod's, an unknown security profile;
    UserError when the user cannot be resolved.
    """
    sec = inp.config.security
    if sec.privileged and not inp.pod.privileged:
        raise SpecError("no privileged container allowed in sandbox")
    if sec.userns != inp.pod.userns:
        raise SpecError(
            "user namespace config for sandbox is different from container "
            f"(sandbox {inp.pod.userns}, container {sec.userns})"
        )

    spec = default_spec(inp.containerd_namespace, inp.id)
    spec["root"] = {"path": DEFAULT_ROOTFS_PATH}
    if sec.readonly_rootfs:
        spec["root"]["readonly"] = True
    caps = _set_process(spec["process"], inp)
    linux = spec["linux"]
    spec["mounts"], rootfs_propagation = _mounts(inp)
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    if sec.privileged:
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
    else:
        _set_paths(linux, "maskedPaths", sec.masked_paths)
        _set_paths(linux, "readonlyPaths", sec.readonly_paths)
    _set_devices(linux, inp)
    if inp.disable_cgroup:
        linux.pop("cgroupsPath", None)
    else:
        if inp.pod.cgroup_parent:
            linux["cgroupsPath"] = cgroups_path(inp.pod.cgroup_parent, inp.id, inp.cgroup_driver)
        if inp.config.resources is not None:
            linux["resources"] |= linux_resources(
                inp.config.resources,
                swap_controller=inp.swap_controller,
                hugetlb_controller=inp.hugetlb_controller,
            )
    linux["namespaces"] = _namespaces(inp)
    if sec.userns is not None:
        linux["uidMappings"] = [id_mapping(m) for m in sec.userns.uids]
        linux["gidMappings"] = [id_mapping(m) for m in sec.userns.gids]
    if sec.selinux_mount_label:
        linux["mountLabel"] = sec.selinux_mount_label
    seccomp = _seccomp(inp, caps)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    spec["annotations"] = _annotations(inp)
    return ordered_spec(spec)


def _set_process(process: dict[str, Any], inp: ContainerSpecInput) -> list[str]:
    """Fill `process`; return its capabilities (the seccomp profile depends on them)."""
    cfg = inp.config
    sec = cfg.security
    # containerd's WithoutDefaultSecuritySettings (no rlimits) and WithNewPrivileges.
    process.pop("rlimits", None)
    process["noNewPrivileges"] = sec.no_new_privs
    process["args"] = _process_args(cfg, inp.image)
    if cfg.tty:
        process["terminal"] = True
    process["env"] = _env(inp)
    process["cwd"] = cfg.working_dir or inp.image.working_dir or "/"
    user = effective_user(inp)
    process["user"] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)

    caps = capabilities.resolve(
        default_capabilities(),
        sec.add_capabilities,
        sec.drop_capabilities,
        inp.bounding_capabilities or capabilities.KNOWN,
        privileged=sec.privileged,
    )
    # Ambient capabilities are never set (containerd's WithoutAmbientCaps, docker's rule).
    process["capabilities"] = (
        {"bounding": caps, "effective": list(caps), "permitted": list(caps)} if caps else {}
    )
    if cfg.resources is not None:
        adj = cfg.resources.oom_score_adj
        if inp.own_oom_score_adj is not None:
            adj = restrict_oom_score_adj(adj, inp.own_oom_score_adj)
        process["oomScoreAdj"] = adj
    if sec.selinux_process_label and not sec.privileged:
        process["selinuxLabel"] = sec.selinux_process_label
    apparmor = _apparmor_profile(inp)
    if apparmor:
        process["apparmorProfile"] = apparmor
    return caps


def _process_args(cfg: ContainerConfig, image: ImageProcess) -> list[str]:
    """The kubelet's rules as containerd applies them.

    `command` replaces the image's entrypoint *and* cmd (`args` follow it); without a
    command, the entrypoint runs with `args` or else the image's cmd. An entrypoint of
    one empty string (docker's `ENTRYPOINT [""]`) means none.
    """
    if cfg.command:
        args = [*cfg.command, *cfg.args]
    else:
        entrypoint = [] if list(image.entrypoint) == [""] else list(image.entrypoint)
        args = [*entrypoint, *(cfg.args or image.cmd)]
    if not args:
        raise SpecError("no command specified")
    return args


def _env(inp: ContainerSpecInput) -> list[str]:
    """PATH, TERM (tty), HOSTNAME, then the image's env, then the config's, by key.

    containerd's merge appends a key the image and the config both set twice, and runc
    keeps the last; here the last value takes the first place, so the spec says what the
    process gets.
    """
    env = [DEFAULT_PATH_ENV]
    if inp.config.tty:
        env.append(TTY_TERM_ENV)
    env = merge_env(env, [f"HOSTNAME={inp.pod.hostname}"])
    overrides = [*inp.image.env, *(f"{key}={value}" for key, value in inp.config.envs)]
    by_key = {entry.partition("=")[0]: entry for entry in merge_env(env, overrides)}
    return list(by_key.values())  # a dict keeps each key's first place, with its last value


def _pod_mounts(inp: ContainerSpecInput) -> list[MountConfig]:
    """The pod's hostname, hosts and resolv.conf, and its /dev/shm (containerMounts).

    The files are read-only only with a read-only rootfs (containerd's rule); /dev/shm is
    always writable, the host's when the pod shares the host's IPC namespace.
    """
    readonly = inp.config.security.readonly_rootfs
    files = inp.pod.files_dir
    shm = DEV_SHM if inp.pod.ipc == "node" or not inp.pod.shm else inp.pod.shm
    return [
        MountConfig(ETC_HOSTNAME, posixpath.join(files, "hostname"), readonly, True),
        MountConfig(ETC_HOSTS, posixpath.join(files, "hosts"), readonly, True),
        MountConfig(RESOLV_CONF, posixpath.join(files, "resolv.conf"), readonly, True),
        MountConfig(DEV_SHM, shm, False, shm != DEV_SHM),
    ]


def _mounts(inp: ContainerSpecInput) -> tuple[list[dict[str, Any]], str]:
    """All mounts and the rootfs propagation they need (containerd's WithMounts).

    CRI mounts win over the pod's files and image volumes on the same destination, and
    over the default mounts (a CRI `/dev` also replaces every default under /dev). The
    binds come after the defaults, ordered by depth so a parent never hides a child.
    """
    sec = inp.config.security
    cri = list(inp.config.mounts)
    cri_dests = {_go_clean(m.container_path) for m in cri}
    extras = [
        m
        for m in (*_pod_mounts(inp), *inp.volume_mounts)
        if _go_clean(m.container_path) not in cri_dests
    ]
    binds = sorted([*cri, *extras], key=lambda m: _go_clean(m.container_path).count("/"))
    dests = {_go_clean(m.container_path) for m in binds}

    mounts = []
    for mount in [*default_mounts(), copy.deepcopy(_CGROUP_MOUNT)]:
        dest = _go_clean(mount["destination"])
        if dest == "/run" or dest in dests or ("/dev" in dests and dest.startswith("/dev/")):
            continue
        if sec.privileged and mount["type"] in ("sysfs", "cgroup"):
            mount["options"] = ["rw" if o == "ro" else o for o in mount["options"]]
        mounts.append(mount)

    propagation = ""
    for m in binds:
        entry, propagation = _bind(m, propagation)
        mounts.append(entry)

    if inp.pod.network == "node" and sec.userns is not None:
        # sysfs cannot be mounted in a user namespace that does not own the network
        # namespace: bind the host's, recursively read-only.
        mounts = [m for m in mounts if _go_clean(m["destination"]) != "/sys"]
        mounts.append(
            {
                "destination": "/sys",
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "rro", "nosuid", "nodev", "noexec"],
            }
        )
    return mounts, propagation


def _bind(m: MountConfig, propagation: str) -> tuple[dict[str, Any], str]:
    """One bind mount, and the rootfs propagation after it (rshared beats rslave)."""
    where = f"mount {m.container_path!r} (host path {m.host_path!r})"
    if m.image and not m.readonly:
        raise SpecError(f"{where}: an image volume must be read-only")
    options = ["rbind"]
    if m.propagation == "rshared":
        options.append("rshared")
        propagation = "rshared"
    elif m.propagation == "rslave":
        options.append("rslave")
        if propagation not in ("rshared", "rslave"):
            propagation = "rslave"
    else:
        options.append("rprivate")
    if m.recursive_read_only:
        if not m.readonly:
            raise SpecError(f"{where}: recursive read-only conflicts with a read-write mount")
        if m.propagation != "private":
            raise SpecError(
                f"{where}: recursive read-only needs private propagation, not {m.propagation}"
            )
        options.append("rro")  # runc >= 1.1: mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)
    else:
        options.append("ro" if m.readonly else "rw")
    options.extend(o for o in BIND_OPTIONS if o in m.options)  # runc remounts with them
    entry: dict[str, Any] = {
        "destination": m.container_path,
        "type": "bind",
        "source": m.host_path,
        "options": options,
    }
    if m.uid_mappings:
        entry["uidMappings"] = [id_mapping(x) for x in m.uid_mappings]
    if m.gid_mappings:
        entry["gidMappings"] = [id_mapping(x) for x in m.gid_mappings]
    return entry, propagation


def _set_paths(linux: dict[str, Any], key: str, given: tuple[str, ...]) -> None:
    """Masked or read-only paths: exactly those given (containerd replaces the defaults
    of its base spec with the CRI lists, so none given means none)."""
    if given:
        linux[key] = list(given)
    else:
        linux.pop(key, None)


def _device(d: HostDevice) -> dict[str, Any]:
    return {
        "path": d.path,
        "type": d.kind,
        "major": d.major,
        "minor": d.minor,
        "fileMode": d.file_mode,
        "uid": d.uid,
        "gid": d.gid,
    }


def _set_devices(linux: dict[str, Any], inp: ContainerSpecInput) -> None:
    """The config's devices with a cgroup rule each; privileged: every host device too,
    and one rule allowing all (which replaces the default deny and the per-device rules).
    """
    devices = [_device(d) for d in inp.host_devices]
    rules = linux["resources"]["devices"]
    rules += [
        {"allow": True, "type": d.kind, "major": d.major, "minor": d.minor, "access": d.permissions}
        for d in inp.host_devices
    ]
    if inp.config.security.privileged:
        devices += [_device(d) for d in inp.all_host_devices]
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    if devices:
        linux["devices"] = devices


def _namespaces(inp: ContainerSpecInput) -> list[dict[str, Any]]:
    """The pod's network, IPC and UTS namespaces, joined through the pause process.

    As containerd, they are joined whatever the pod's modes: for a host-network (or host
    IPC) pod, the pause process is in the host's namespace, so joining it is the host's.
    The pid namespace is the container's own (CONTAINER), the pod's (POD, and NODE, where
    the pod's is the host's), or the target container's (TARGET).
    """
    sec = inp.config.security
    pid = inp.pod.pid
    if pid <= 0:
        raise SpecError(f"the pod's sandbox process is not known (pid {pid})")
    paths = {
        "network": f"/proc/{pid}/ns/net",
        "ipc": f"/proc/{pid}/ns/ipc",
        "uts": f"/proc/{pid}/ns/uts",
    }
    if sec.pid == "target":
        if inp.target_pid <= 0:
            raise SpecError(f"the target container {sec.target_id!r} has no running process")
        paths["pid"] = f"/proc/{inp.target_pid}/ns/pid"
    elif sec.pid != "container":
        paths["pid"] = f"/proc/{pid}/ns/pid"
    namespaces = default_namespaces()
    for ns in namespaces:
        if ns["type"] in paths:
            ns["path"] = paths[ns["type"]]
    if inp.cgroup_v2 and not sec.privileged:
        # Hides the host's cgroup tree; privileged containers keep seeing it (kubernetes
        # KEP 2254 and containers/libpod#4363).
        namespaces.append({"type": "cgroup"})
    if sec.userns is not None:
        namespaces.append({"type": "user", "path": f"/proc/{pid}/ns/user"})
    return namespaces


def _profile_kind(value: str, what: str) -> tuple[str, str]:
    """("", ""), ("unconfined", ""), ("runtime/default", "") or ("localhost", ref)."""
    if value in ("", UNCONFINED):
        return value, ""
    if value in (RUNTIME_DEFAULT, DOCKER_DEFAULT):
        return RUNTIME_DEFAULT, ""
    if value.startswith(LOCALHOST_PREFIX) and len(value) > len(LOCALHOST_PREFIX):
        return "localhost", value.removeprefix(LOCALHOST_PREFIX)
    raise SpecError(f"invalid {what} profile {value!r}")


def _apparmor_profile(inp: ContainerSpecInput) -> str:
    """The AppArmor profile, "" for none.

    Without AppArmor on the host nothing is set, whatever was asked (containerd refuses
    a non-unconfined profile there instead). An unset profile is the runtime default
    (kubernetes#51746), which privileged containers do without; a localhost profile
    applies to them too.
    """
    kind, ref = _profile_kind(inp.config.security.apparmor, "apparmor")
    if not inp.apparmor_enabled or kind == UNCONFINED:
        return ""
    if kind == "localhost":
        return ref
    return "" if inp.config.security.privileged else APPARMOR_DEFAULT_PROFILE


def _seccomp(inp: ContainerSpecInput, caps: Iterable[str]) -> dict[str, Any] | None:
    """The `linux.seccomp` object; None for unset, unconfined, and privileged containers.

    RuntimeDefault is criproxy's default profile built here for the container's own
    capabilities (never the host's: with CAP_SYS_ADMIN in them, unshare and mount would
    be allowed); Localhost is the caller's parsed `seccomp_profile`.
    """
    kind, ref = _profile_kind(inp.config.security.seccomp, "seccomp")
    if inp.config.security.privileged or kind in ("", UNCONFINED):
        return None
    if kind == RUNTIME_DEFAULT:
        return default_profile(caps)
    if inp.seccomp_profile is None:
        raise SpecError(f"seccomp profile {ref!r} was not loaded")
    return copy.deepcopy(dict(inp.seccomp_profile))


def _annotations(inp: ContainerSpecInput) -> dict[str, str]:
    """Matching pod annotations, then matching container ones, then containerd's own."""
    pod = inp.pod
    result = ann.passthrough_annotations(pod.annotations, inp.pod_annotation_patterns)
    result |= ann.passthrough_annotations(inp.config.annotations, inp.container_annotation_patterns)
    result |= {
        ann.CONTAINER_TYPE: ann.CONTAINER_TYPE_CONTAINER,
        ann.SANDBOX_ID: pod.id,
        ann.SANDBOX_NAMESPACE: pod.namespace,
        ann.SANDBOX_UID: pod.uid,
        ann.SANDBOX_NAME: pod.name,
        ann.CONTAINER_NAME: inp.config.name,
        ann.IMAGE_NAME: inp.image_name,
    }
    return dict(sorted(result.items()))
