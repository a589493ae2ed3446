"""The host side of a container's OCI spec: read every fact the pure builder needs.

`criproxy.oci.container_spec` is pure; this module does the I/O around it (the rootfs's
/etc/passwd, device nodes, criproxy's own capabilities and oom score, a seccomp profile
file, missing host directories of bind mounts) and runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from criproxy import host
from criproxy.containers import rootfs, signals
from criproxy.containers.model import EffectiveUser
from criproxy.errors import FailedPrecondition, Internal, InvalidArgument
from criproxy.oci import ImageProcess, capabilities
from criproxy.oci.container import (
    ContainerSpecInput,
    HostDevice,
    MountConfig,
    PodFacts,
    container_spec,
)
from criproxy.sandbox.spec import localhost_seccomp

if TYPE_CHECKING:
    from collections.abc import Sequence

    from criproxy.config import Config
    from criproxy.containerd import Mount
    from criproxy.images.store import Image
    from criproxy.oci.container import ContainerConfig, DeviceConfig
    from criproxy.sandbox.model import Sandbox


@dataclass(frozen=True)
class BuiltSpec:
    spec: dict[str, Any]
    user: EffectiveUser
    stop_signal: str
    swap_controller: bool
    """Whether this host limits swap (the container's effective swap follows from it)."""


UserFiles = tuple[str | None, str | None]
"""An image's /etc/passwd and /etc/group (None: the image has none)."""

_USER_FILES_KEPT = 256
_user_files_by_chain: dict[str, UserFiles] = {}
_user_files_lock = threading.Lock()  # builds run in worker threads


def known_user_files(image: Image) -> UserFiles | None:
    """The image's user files when read before: a chain of layers never changes, so the
    next containers of an image need no reads."""
    key = image.content.chain_id
    if not key:
        return None
    with _user_files_lock:
        return _user_files_by_chain.get(key)


def _read_user_files(image: Image, mounts: Sequence[Mount]) -> UserFiles:
    try:
        files = (rootfs.read_text(mounts, "/etc/passwd"), rootfs.read_text(mounts, "/etc/group"))
    except rootfs.UnreadableRootfs as err:
        raise FailedPrecondition(f"cannot resolve the container's user: {err}") from None
    key = image.content.chain_id
    if key:
        with _user_files_lock:
            if len(_user_files_by_chain) >= _USER_FILES_KEPT:
                del _user_files_by_chain[next(iter(_user_files_by_chain))]
            _user_files_by_chain[key] = files
    return files


def needs_rootfs(image: Image, user_files: UserFiles | None) -> bool:
    """Whether `build` reads the container's rootfs (so its snapshot must be prepared
    first): the image's user files not at hand, or VOLUMEs to fill from the image."""
    image_config = image.content.config.raw.get("config") or {}
    return user_files is None or bool(image_config.get("Volumes"))


@cache
def _bounding_set() -> tuple[str, ...]:
    """criproxy's bounding capabilities: what no container can be given more of."""
    return capabilities.from_mask(host.capability_mask("CapBnd"))


def build(
    container_id: str,
    config: ContainerConfig,
    image: Image,
    sandbox: Sandbox,
    *,
    mounts: Sequence[Mount],
    user_files: UserFiles | None,
    cfg: Config,
    volumes_dir: Path,
    target_pid: int,
) -> BuiltSpec:
    """Blocking: call from a worker thread."""
    image_config = image.content.config.raw.get("config") or {}
    process = ImageProcess.from_image_config(image_config)
    security = config.security
    passwd, group = user_files if user_files is not None else _read_user_files(image, mounts)
    for mount in config.mounts:
        _ensure_host_path(mount)
    bounding = _bounding_set()
    # the runtime default is built by the spec itself, from the container's capabilities
    profile = None if security.privileged else localhost_seccomp(security.seccomp)
    pod = sandbox.config
    cgroups = host.cgroup_info()
    swap = host.swap_controller_available()
    inp = ContainerSpecInput(
        id=container_id,
        config=config,
        image=process,
        image_name=image.repo_tags[0] if image.repo_tags else config.image,
        pod=PodFacts(
            id=sandbox.id,
            name=pod.metadata.name,
            namespace=pod.metadata.namespace,
            uid=pod.metadata.uid,
            pid=sandbox.pid,
            hostname=pod.hostname or os.uname().nodename,
            files_dir=sandbox.files_dir,
            shm=sandbox.shm,
            cgroup_parent=pod.cgroup_parent,
            network=pod.network,
            ipc=pod.ipc,
            privileged=pod.security.privileged,
            annotations=pod.annotations,
            sysctls=pod.sysctls,
            userns=pod.security.userns,
        ),
        target_pid=target_pid,
        host_devices=tuple(d for device in config.devices for d in _devices(device)),
        all_host_devices=_all_host_devices() if security.privileged else (),
        bounding_capabilities=bounding,
        containerd_namespace=cfg.containerd.namespace,
        cgroup_driver=cfg.cgroup_driver,
        cgroup_v2=cgroups.version == 2,
        swap_controller=swap,
        hugetlb_controller="hugetlb" in cgroups.controllers,
        own_oom_score_adj=(
            host.own_oom_score_adj()
            if host.restrict_oom_score_adj(cfg.restrict_oom_score_adj)
            else None
        ),
        seccomp_profile=profile,
        apparmor_enabled=_apparmor_enabled(),
        etc_passwd=passwd,
        etc_group=group,
        volume_mounts=_image_volumes(image_config, config, volumes_dir, mounts),
    )
    spec = container_spec(inp)
    process_user = spec["process"]["user"]  # resolved once, against the rootfs's files
    user = EffectiveUser(
        process_user["uid"],
        process_user["gid"],
        tuple(process_user.get("additionalGids", ())),
    )
    stop_signal = str(image_config.get("StopSignal") or "SIGTERM")
    return BuiltSpec(spec, user, signals.from_image(stop_signal), swap)


def _ensure_host_path(mount: MountConfig) -> None:
    """As containerd: a missing host path of a bind mount is created as a directory."""
    if mount.image or not mount.host_path:
        return
    try:
        os.stat(mount.host_path)
    except FileNotFoundError:
        try:
            os.makedirs(mount.host_path, mode=0o755, exist_ok=True)
        except OSError as err:
            raise InvalidArgument(
                f"mount {mount.container_path!r}: cannot create host path {mount.host_path!r}: "
                f"{err.strerror}"
            ) from None


_DEVICE_KINDS: dict[int, Literal["c", "b", "p"]] = {
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
}


def _device(host_path: str, container_path: str, permissions: str) -> HostDevice | None:
    st = os.stat(host_path)  # follows symlinks, as containerd's DeviceFromPath
    kind = _DEVICE_KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return None
    return HostDevice(
        path=container_path,
        kind=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        file_mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        permissions=permissions,
    )


def _devices(device: DeviceConfig) -> list[HostDevice]:
    """A device node, or every device under a directory (containerd's WithDevices)."""
    try:
        if os.path.isdir(device.host_path):
            found = []
            for root, _, names in os.walk(device.host_path):
                for name in names:
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, device.host_path)
                    dev = _device(
                        path, os.path.join(device.container_path, rel), device.permissions
                    )
                    if dev is not None:
                        found.append(dev)
            return found
        dev = _device(device.host_path, device.container_path, device.permissions)
    except OSError as err:
        raise InvalidArgument(f"device {device.host_path!r}: {err.strerror}") from None
    if dev is None:
        raise InvalidArgument(f"device {device.host_path!r} is not a device node")
    return [dev]


def _all_host_devices() -> tuple[HostDevice, ...]:
    """Every device node under /dev, as containerd's WithHostDevices."""
    found = []
    for root, dirs, names in os.walk("/dev"):
        dirs[:] = [d for d in dirs if d not in ("pts", "shm", "mqueue")]
        for name in names:
            path = os.path.join(root, name)
            if name == "console" and root == "/dev":
                continue
            try:
                dev = _device(path, path, "rwm")
            except OSError:
                continue
            if dev is not None and dev.kind != "p":
                found.append(dev)
    return tuple(found)


@cache
def _apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def _image_volumes(
    image_config: dict[str, Any],
    config: ContainerConfig,
    volumes_dir: Path,
    rootfs_mounts: Sequence[Mount],
) -> tuple[MountConfig, ...]:
    """The image's VOLUMEs not covered by a CRI mount, each backed by a directory of the
    container's own that starts with what the image has at that path (as containerd's
    CRI copies it)."""
    taken = {os.path.normpath(m.container_path) for m in config.mounts}
    out = []
    for path in sorted(image_config.get("Volumes") or {}):
        dest = os.path.normpath(path)
        if dest in taken:
            continue
        source = volumes_dir / hashlib.sha256(dest.encode()).hexdigest()[:32]
        source.mkdir(parents=True, exist_ok=True, mode=0o755)
        out.append(MountConfig(container_path=dest, host_path=str(source)))
    if out:
        _copy_image_contents(rootfs_mounts, [(m.container_path, m.host_path) for m in out])
    return tuple(out)


def _copy_image_contents(mounts: Sequence[Mount], volumes: list[tuple[str, str]]) -> None:
    """Copy the image's files at each volume path into its directory: the image's layers
    are mounted read-only on a scratch directory for the copy (one layer: read directly)."""
    uppers = _upper_dirs(mounts)
    lowers = [d for d in (str(d) for d in rootfs.layer_dirs(mounts)) if d not in uppers]
    with tempfile.TemporaryDirectory(prefix="criproxy-volumes-") as scratch:
        root = scratch
        mounted = False
        if len(lowers) > 1:
            options = f"ro,lowerdir={':'.join(lowers)}"
            done = subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", options, scratch],
                check=False,
                capture_output=True,
            )
            if done.returncode != 0:
                raise Internal(
                    "cannot mount the image to copy its volumes: "
                    + done.stderr.decode(errors="replace").strip()
                )
            mounted = True
        elif lowers:
            root = lowers[0]
        try:
            for dest, target in volumes:
                src = _inside(root, dest)
                if src is not None and os.path.isdir(src):
                    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        finally:
            if mounted:
                subprocess.run(["umount", scratch], check=False, capture_output=True)


def _inside(root: str, path: str) -> str | None:
    """`path` below `root` when no component of it is a symlink (an image's links would
    resolve against the host's root here); None otherwise or when it does not exist."""
    current = root
    for part in (p for p in path.split("/") if p):
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
    return current


def _upper_dirs(mounts: Sequence[Mount]) -> set[str]:
    return {
        option.partition("=")[2]
        for m in mounts
        for option in m.options
        if option.startswith("upperdir=")
    }
