"""Image volumes (CRI `Mount.image`, KEP-4639): an image the kubelet pulled, mounted
read-only into a container, whole or at `image_sub_path`.

Each is a read-only view of the image's layers (a snapshot the container's record
references through a GC label, so the layers stay while the container does, whatever
happens to the image's name), mounted on the host under the state dir and bound into the
container, as containerd 2.1 does. The sub path is resolved by the kernel inside the
mounted image (`openat2` with RESOLVE_IN_ROOT): an image's links cannot lead out of it.
The mounts go with the container; a criproxy killed meanwhile finds them at its next
start (orphans are unmounted), and a start after a host reboot mounts the view again.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition, InvalidArgument, NotFound
from criproxy.images.extract import open_in_root
from criproxy.sandbox import idmap

if TYPE_CHECKING:
    from pathlib import Path

    from criproxy.containerd import Containerd, Mount
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container
    from criproxy.oci.container import MountConfig
    from criproxy.steps import UndoStack

GC_LABEL = "containerd.io/gc.ref.snapshot.{snapshotter}/image-volume-{index}"
_MS_RDONLY = 0x1
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]


def view_key(container_id: str, index: int) -> str:
    return f"{container_id}-image-volume-{index}"


def _target(deps: ContainerDeps, container_id: str, index: int) -> Path:
    return deps.paths.image_volume_root / container_id / str(index)


def _where(m: MountConfig) -> str:
    return f"image volume {m.image!r} at {m.container_path!r}"


@dataclass(frozen=True)
class Prepared:
    mounts: tuple[MountConfig, ...]
    """The request's mounts, each image volume's host path now the mounted image."""
    labels: dict[str, str]
    """For the container's record: the views it references."""


async def prepare(
    deps: ContainerDeps,
    cd: Containerd,
    container_id: str,
    mounts: tuple[MountConfig, ...],
    undo: UndoStack,
) -> Prepared:
    """Every image volume of a new container viewed and mounted; `cd` is the set-up's
    leased client, so a view made by a call cut short goes with its lease."""
    snapshotter = deps.config.containerd.snapshotter
    out: list[MountConfig] = []
    labels: dict[str, str] = {}
    root = deps.paths.image_volume_root / container_id
    for index, m in enumerate(mounts):
        if not m.image:
            out.append(m)
            continue
        if not m.readonly:
            raise InvalidArgument(f"{_where(m)}: an image volume must be read-only")
        image = deps.images.status(m.image)
        if image is None:
            raise NotFound(f"{_where(m)}: image not found: pull it first")
        if not labels:  # once: unmounts everything below the container's directory
            undo.push_sync(functools.partial(idmap.release, root))
        key = view_key(container_id, index)
        undo.push(functools.partial(deps.containerd.snapshots.remove, snapshotter, key))
        view = await cd.snapshots.view(snapshotter, key, image.content.chain_id)
        host = await anyio.to_thread.run_sync(_mount, view, _target(deps, container_id, index), m)
        labels[GC_LABEL.format(snapshotter=snapshotter, index=index)] = key
        out.append(dataclasses.replace(m, host_path=host, image_ref=image.id))
    return Prepared(tuple(out), labels)


async def ensure_mounted(deps: ContainerDeps, container: Container) -> None:
    """Before a start: each image volume's mount is there (a host reboot takes the state
    dir's mounts; the views, in containerd, stay)."""
    snapshotter = deps.config.containerd.snapshotter
    for index, m in enumerate(container.config.mounts):
        if not m.image:
            continue
        target = _target(deps, container.id, index)
        if await anyio.to_thread.run_sync(os.path.ismount, target):
            continue
        view = await deps.containerd.snapshots.mounts(snapshotter, view_key(container.id, index))
        await anyio.to_thread.run_sync(_mount, view, target, m)


async def release(deps: ContainerDeps, container: Container) -> None:
    """A removed container's image volumes: unmounted first, then their views removed."""
    indices = [i for i, m in enumerate(container.config.mounts) if m.image]
    if not indices:
        return
    await anyio.to_thread.run_sync(idmap.release, deps.paths.image_volume_root / container.id)
    snapshotter = deps.config.containerd.snapshotter
    for index in indices:
        await deps.containerd.snapshots.remove(snapshotter, view_key(container.id, index))


def _mount(view: list[Mount], target: Path, m: MountConfig) -> str:
    """The view mounted read-only at `target`; the host path to bind (the image's root,
    or its sub path resolved inside it). Blocking."""
    where = _where(m)
    if len(view) != 1:
        raise FailedPrecondition(f"{where}: the image's view has {len(view)} mounts, not 1")
    mount = view[0]
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = os.fsencode(target)
    if mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options:
        _check(_libc.mount(os.fsencode(mount.source), path, None, _MS_BIND | _MS_REC, None), where)
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        _check(_libc.mount(None, path, None, flags, None), where)
    elif mount.type == "overlay":
        data = ",".join(o for o in mount.options if o not in ("ro", "rw"))
        _check(_libc.mount(b"overlay", path, b"overlay", _MS_RDONLY, data.encode()), where)
    else:
        raise FailedPrecondition(f"{where}: cannot mount a {mount.type!r} view of the image")
    if not m.image_sub_path:
        return str(target)
    return _resolve(target, m.image_sub_path, where)


def _resolve(root: Path, sub_path: str, where: str) -> str:
    """`sub_path` inside the mounted image, links resolved within it; it must exist."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, os.fsencode(sub_path), os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(
            f"{where}: image_sub_path {sub_path!r} does not exist in the image"
        ) from None
    except OSError as err:
        raise InvalidArgument(f"{where}: image_sub_path {sub_path!r}: {err.strerror}") from None
    finally:
        os.close(root_fd)
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if resolved != str(root) and not resolved.startswith(f"{root}/"):
        raise InvalidArgument(f"{where}: image_sub_path {sub_path!r} leads out of the image")
    return resolved


def _check(ret: int, where: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise FailedPrecondition(f"{where}: the image cannot be mounted: {os.strerror(err)}")
