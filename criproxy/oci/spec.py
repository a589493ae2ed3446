"""OCI runtime specs as containerd's CRI plugin builds them, as plain JSON-able dicts.

Every function here is pure: the caller reads whatever the host or the image holds
(its own oom_score_adj, the image's /etc/passwd, a seccomp profile) and passes it in.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from criproxy.errors import InvalidArgument
from criproxy.oci import annotations as ann
from criproxy.oci.defaults import (
    DEFAULT_ROOTFS_PATH,
    default_mounts,
    default_namespaces,
    default_spec,
)
from criproxy.oci.user import resolve_user, user_string

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

NamespaceMode = Literal["pod", "container", "node", "target"]
"""CRI's NamespaceMode, lower-cased."""
CgroupDriver = Literal["cgroupfs", "systemd"]

DEFAULT_SANDBOX_OOM_SCORE_ADJ = -998
"""The pause container's oom_score_adj (kubernetes#47938), before any clamping."""
DEFAULT_SANDBOX_CPU_SHARES = 2
SYSTEMD_CGROUP_PREFIX = "cri-containerd"
"""The `prefix` of `slice:prefix:name` (containerd's, so the kubelet's cAdvisor finds pods)."""
DEV_SHM = "/dev/shm"
RESOLV_CONF = "/etc/resolv.conf"
UNPRIVILEGED_PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
PING_GROUP_RANGE_SYSCTL = "net.ipv4.ping_group_range"
_BIND_RO = ("rbind", "ro", "nosuid", "nodev", "noexec")


class SpecError(InvalidArgument):
    """The inputs cannot make a spec (an image without a command, an unknown user)."""


@dataclass(frozen=True)
class ImageProcess:
    """What an image's config says about the process it runs."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_image_config(cls, config: Mapping[str, Any] | None) -> ImageProcess:
        """From the `config` object of an OCI/docker image config (`Env`, `Cmd`, ...)."""
        config = config or {}

        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in config.get(key) or ())

        return cls(
            env=strings("Env"),
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )


@dataclass(frozen=True)
class SandboxResources:
    """The pod's `linux.resources` as the kubelet sends them (for annotations only)."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0


@dataclass(frozen=True)
class IdMapping:
    container_id: int
    host_id: int
    length: int


@dataclass(frozen=True)
class SandboxSpecInput:
    """Everything the pause container's spec depends on, already validated and resolved."""

    id: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    image: ImageProcess
    """The pause image's process config."""
    image_name: str
    """The pause image reference (an annotation)."""
    sandbox_shm_path: str
    """The tmpfs made for the pod's /dev/shm; the host's /dev/shm is used when ipc is node."""
    resolv_conf_path: str
    """The pod's resolv.conf on the host, bound read-only at /etc/resolv.conf."""
    hostname: str = ""
    log_directory: str = ""
    netns_path: str = ""
    """The pod's network namespace; ignored when network is node."""
    network: NamespaceMode = "pod"
    pid: NamespaceMode = "pod"
    ipc: NamespaceMode = "pod"
    cgroup_parent: str = ""
    cgroup_driver: CgroupDriver = "cgroupfs"
    disable_cgroup: bool = False
    containerd_namespace: str = "k8s.io"
    """Names the default cgroup (`/<namespace>/<id>`) used without a cgroup parent."""
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    seccomp: Mapping[str, Any] | None = None
    """A ready `linux.seccomp` object, or None for none; dropped when privileged."""
    selinux_process_label: str = ""
    selinux_mount_label: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    enable_unprivileged_ports: bool = False
    enable_unprivileged_icmp: bool = False
    """Only when criproxy does not itself run in a user namespace (as containerd checks)."""
    oom_score_adj: int = DEFAULT_SANDBOX_OOM_SCORE_ADJ
    """Placed as given: clamp it first with restrict_oom_score_adj when needed."""
    resources: SandboxResources | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The pod's annotations; only those matching pod_annotation_patterns reach the spec."""
    pod_annotation_patterns: tuple[str, ...] = ()
    """The runtime handler's `pod_annotations` globs."""
    etc_passwd: str | None = None
    """The pause image's /etc/passwd text (None: absent), read only to resolve names."""
    etc_group: str | None = None
    userns_path: str = ""
    """The pod's pinned user namespace (which owns its netns); "" for the host's."""
    uid_mappings: tuple[IdMapping, ...] = ()
    """(container id, host id, size) of the pod's user namespace."""
    gid_mappings: tuple[IdMapping, ...] = ()


def cgroups_path(parent: str, container_id: str, driver: CgroupDriver) -> str:
    """The `linux.cgroupsPath` of a container under `parent`.

    cgroupfs: `<parent>/<id>`; systemd: `<last slice of parent>:cri-containerd:<id>`, the
    form runc's systemd driver takes. As containerd does, a parent whose last element ends
    in `.slice` gets the systemd form whatever the driver.
    """
    base = _go_base(parent)
    if driver == "systemd" or base.endswith(".slice"):
        return f"{base}:{SYSTEMD_CGROUP_PREFIX}:{container_id}"
    return _go_clean(posixpath.join(parent, container_id))


def restrict_oom_score_adj(requested: int, current: int) -> int:
    """A score criproxy may set: not below its own (`current`) when it may not lower scores."""
    return max(requested, current)


def merge_env(defaults: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """`overrides` applied to `defaults` by key; a bare `KEY` unsets a default (containerd)."""
    results = list(defaults)
    index = {entry.split("=", 1)[0]: i for i, entry in enumerate(results)}
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                results[index[key]] = ""
            continue
        if key in index:
            results[index[key]] = value
        else:
            results.append(value)
    return [entry for entry in results if entry]


def sandbox_spec(inp: SandboxSpecInput) -> dict[str, Any]:
    """The pause container's OCI runtime spec, as containerd's CRI plugin writes it.

    Raises SpecError when the pause image has neither entrypoint nor cmd, or when its user
    (or run_as_user/run_as_group) cannot be resolved.
    """
    args = [*inp.image.entrypoint, *inp.image.cmd]
    if not args:
        raise SpecError(f"the sandbox image {inp.image_name!r} has no entrypoint and no cmd")
    host_network = inp.network == "node"
    userstr = user_string(inp.run_as_user, inp.run_as_group) or inp.image.user

    spec = default_spec(inp.containerd_namespace, inp.id)
    process = spec["process"]
    linux = spec["linux"]

    # The pause container runs without the default rlimits, on a read-only rootfs.
    process.pop("rlimits", None)
    spec["root"] = {"path": DEFAULT_ROOTFS_PATH, "readonly": True}
    if inp.hostname:
        spec["hostname"] = inp.hostname

    env = merge_env([], inp.image.env)
    if env:
        process["env"] = env
    if inp.image.working_dir:
        process["cwd"] = inp.image.working_dir
    process["args"] = args

    if inp.disable_cgroup:
        linux.pop("cgroupsPath", None)
    elif inp.cgroup_parent:
        linux["cgroupsPath"] = cgroups_path(inp.cgroup_parent, inp.id, inp.cgroup_driver)

    linux["namespaces"] = _namespaces(inp, host_network)
    if inp.userns_path:
        linux["namespaces"].append({"type": "user", "path": inp.userns_path})
        linux["uidMappings"] = [id_mapping(m) for m in inp.uid_mappings]
        linux["gidMappings"] = [id_mapping(m) for m in inp.gid_mappings]
    spec["mounts"] = _mounts(inp)

    if inp.selinux_mount_label:
        linux["mountLabel"] = inp.selinux_mount_label
    if inp.selinux_process_label and not inp.privileged:
        process["selinuxLabel"] = inp.selinux_process_label

    _set_user(process, inp, userstr)

    sysctls = dict(inp.sysctls)
    if not host_network:
        if inp.enable_unprivileged_ports:
            sysctls.setdefault(UNPRIVILEGED_PORT_SYSCTL, "0")
        if inp.enable_unprivileged_icmp:
            sysctls.setdefault(PING_GROUP_RANGE_SYSCTL, "0 2147483647")
    if sysctls:
        linux["sysctl"] = dict(sorted(sysctls.items()))

    if not inp.disable_cgroup:
        linux["resources"]["cpu"] = {"shares": DEFAULT_SANDBOX_CPU_SHARES}
    process["oomScoreAdj"] = inp.oom_score_adj

    if inp.seccomp is not None and not inp.privileged:
        linux["seccomp"] = copy.deepcopy(dict(inp.seccomp))

    spec["annotations"] = _annotations(inp)
    return ordered_spec(spec)


def id_mapping(m: IdMapping) -> dict[str, int]:
    """One OCI `uidMappings`/`gidMappings` entry."""
    return {"containerID": m.container_id, "hostID": m.host_id, "size": m.length}


def _namespaces(inp: SandboxSpecInput, host_network: bool) -> list[dict[str, Any]]:
    dropped = set()
    if host_network:
        dropped |= {"network", "uts"}
    if inp.pid == "node":
        dropped.add("pid")
    if inp.ipc == "node":
        dropped.add("ipc")
    namespaces = []
    for ns in default_namespaces():
        if ns["type"] in dropped:
            continue
        if ns["type"] == "network" and inp.netns_path:
            ns["path"] = inp.netns_path
        namespaces.append(ns)
    return namespaces


def _mounts(inp: SandboxSpecInput) -> list[dict[str, Any]]:
    mounts = [m for m in default_mounts() if m["destination"] not in ("/run", DEV_SHM)]
    if inp.privileged:
        for mount in mounts:
            if mount["destination"] == "/sys":
                options = mount["options"]
                if "ro" in options:
                    options[options.index("ro")] = "rw"
    shm = DEV_SHM if inp.ipc == "node" else inp.sandbox_shm_path
    mounts.append(
        {"destination": DEV_SHM, "type": "bind", "source": shm, "options": list(_BIND_RO)}
    )
    mounts.append(
        {
            "destination": RESOLV_CONF,
            "type": "bind",
            "source": inp.resolv_conf_path,
            "options": list(_BIND_RO),
        }
    )
    return mounts


def _set_user(process: dict[str, Any], inp: SandboxSpecInput, userstr: str) -> None:
    """uid, gid and additional gids as containerd leaves them for the pause container.

    containerd applies the user after the supplemental groups, and setting a user resets
    the additional gids to the primary gid alone; the groups survive only without a user.
    """
    if userstr:
        uid, gid = resolve_user(userstr, inp.etc_passwd, inp.etc_group)
        process["user"] = {"uid": uid, "gid": gid, "additionalGids": [gid]}
        return
    groups = sorted(set(inp.supplemental_groups))
    process["user"] = {"uid": 0, "gid": 0}
    if groups:
        process["user"]["additionalGids"] = groups


def _annotations(inp: SandboxSpecInput) -> dict[str, str]:
    result = ann.passthrough_annotations(inp.annotations, inp.pod_annotation_patterns)
    if inp.resources is not None:
        res = inp.resources
        result[ann.SANDBOX_CPU_PERIOD] = str(res.cpu_period)
        result[ann.SANDBOX_CPU_QUOTA] = str(res.cpu_quota)
        result[ann.SANDBOX_CPU_SHARES] = str(res.cpu_shares)
        result[ann.SANDBOX_MEMORY] = str(res.memory_limit_in_bytes)
    result.update(
        {
            ann.SANDBOX_ID: inp.id,
            ann.SANDBOX_NAMESPACE: inp.pod_namespace,
            ann.SANDBOX_UID: inp.pod_uid,
            ann.SANDBOX_NAME: inp.pod_name,
            ann.SANDBOX_LOG_DIRECTORY: inp.log_directory,
            ann.SANDBOX_IMAGE_NAME: inp.image_name,
            ann.CONTAINER_TYPE: ann.CONTAINER_TYPE_SANDBOX,
        }
    )
    return dict(sorted(result.items()))


_SPEC_ORDER = ("ociVersion", "process", "root", "hostname", "mounts", "annotations", "linux")
_PROCESS_ORDER = (
    "terminal",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
    "apparmorProfile",
    "oomScoreAdj",
    "selinuxLabel",
)
_LINUX_ORDER = (
    "uidMappings",
    "gidMappings",
    "sysctl",
    "resources",
    "cgroupsPath",
    "namespaces",
    "devices",
    "seccomp",
    "rootfsPropagation",
    "maskedPaths",
    "readonlyPaths",
    "mountLabel",
)


def ordered_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Keys in runtime-spec's field order (as Go writes them), for specs that diff well."""

    def order(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        known = {k: obj[k] for k in keys if k in obj}
        return known | {k: v for k, v in obj.items() if k not in known}

    spec = order(spec, _SPEC_ORDER)
    spec["process"] = order(spec["process"], _PROCESS_ORDER)
    spec["linux"] = order(spec["linux"], _LINUX_ORDER)
    return spec


def _go_clean(path: str) -> str:
    """Go's path.Clean (posixpath.normpath keeps a leading `//`)."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _go_base(path: str) -> str:
    """Go's path.Base: the last element, trailing slashes ignored; `.` for "", `/` for `/`."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rsplit("/", 1)[-1]
