"""Rootfs layers seen through a pod's user namespace (idmapped mounts).

A pod with its own user namespace runs as a remapped root (e.g. host uid 1000), which
cannot write to image layers owned by host root, not even to create the mount points of
the pod's files. So each read-only layer of the overlay is bind-mounted with
MOUNT_ATTR_IDMAP (Linux >= 5.12; overlayfs accepts idmapped layers from 5.19) and the
writable layer is handed to the remapped root, as containerd 2.x's overlay snapshotter
does with `remap-ids`. The idmapped mounts live under the owner's state directory until
the container goes, in a directory of their own that nothing ever deletes recursively
(an rmtree through a layer mount would empty the image). Python has no wrappers for
these syscalls, hence ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from typing import TYPE_CHECKING

from criproxy.containerd import Mount
from criproxy.errors import FailedPrecondition, Internal

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from criproxy.oci.container import UsernsConfig
    from criproxy.oci.spec import IdMapping

_SYSCALLS = {"x86_64": (428, 429, 442), "aarch64": (428, 429, 442)}
"""open_tree, move_mount, mount_setattr: the same numbers on both (the unified table)."""
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _syscall(number: int, *args: object, what: str) -> int:
    ret = int(_libc.syscall(number, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _idmapped_bind(source: str, target: Path, userns_fd: int) -> None:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise FailedPrecondition(f"idmapped mounts are not wired for {platform.machine()}")
    open_tree, move_mount, mount_setattr = numbers
    tree = _syscall(
        open_tree,
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(source),
        ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC),
        what=f"open_tree {source}",
    )
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        _syscall(
            mount_setattr,
            ctypes.c_int(tree),
            b"",
            ctypes.c_uint(_AT_EMPTY_PATH),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            what=f"idmap {source}",
        )
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        _syscall(
            move_mount,
            ctypes.c_int(tree),
            b"",
            ctypes.c_int(_AT_FDCWD),
            os.fsencode(target),
            ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            what=f"move the idmapped {source} to {target}",
        )
    finally:
        os.close(tree)


def idmapped_rootfs(
    mounts: Sequence[Mount], userns: str, directory: Path, mappings: UsernsConfig
) -> list[Mount]:
    """The rootfs mounts with every read-only layer idmapped through `userns` (mounted
    under `directory`, replacing what a crashed attempt left there) and the writable layer
    owned by the remapped root. Blocking."""
    release(directory)
    root_uid, root_gid = _root_ids(mappings)
    if len(mounts) != 1 or mounts[0].type not in ("overlay", "bind"):
        raise FailedPrecondition("a pod user namespace needs an overlayfs or bind rootfs")
    mount = mounts[0]
    try:
        userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise Internal(f"cannot open the pod's user namespace {userns}: {err}") from None
    try:
        if mount.type == "bind":
            os.chown(mount.source, root_uid, root_gid)
            return list(mounts)
        options = []
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "lowerdir":
                layers = []
                for i, lower in enumerate(value.split(":")):
                    target = directory / f"layer{i}"
                    _idmapped_bind(lower, target, userns_fd)
                    layers.append(str(target))
                options.append("lowerdir=" + ":".join(layers))
            else:
                if key in ("upperdir", "workdir"):
                    os.chown(value, root_uid, root_gid)
                options.append(option)
        return [Mount(mount.type, mount.source, mount.target, tuple(options))]
    except OSError as err:
        release(directory)
        hint = (
            " (the filesystem may not support idmapped mounts)"
            if err.errno
            in (
                errno.EINVAL,
                errno.EPERM,
                errno.EOPNOTSUPP,
            )
            else ""
        )
        raise Internal(
            f"cannot idmap the rootfs for the pod's user namespace: {err}{hint}"
        ) from None
    finally:
        os.close(userns_fd)


def release(directory: Path) -> None:
    """Unmount the idmapped layers under `directory` (lazily: a running overlay keeps its
    own references) and remove it; only empty directories are removed. Blocking."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        _libc.umount2(os.fsencode(entry), _MNT_DETACH)
        with contextlib.suppress(OSError):
            entry.rmdir()
    with contextlib.suppress(OSError):
        directory.rmdir()


def _root_ids(userns: UsernsConfig) -> tuple[int, int]:
    """The host uid and gid of the namespace's root."""

    def root(maps: Sequence[IdMapping]) -> int:
        for m in maps:
            if m.container_id <= 0 < m.container_id + m.length:
                return m.host_id - m.container_id
        raise FailedPrecondition("the pod's user namespace does not map id 0")

    return root(userns.uids), root(userns.gids)
