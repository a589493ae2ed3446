"""CheckpointContainer: a running container's processes dumped by CRIU (through
containerd's task API, the container left running), with its writable layer's changes,
its spec, config and status and its log, in one tar archive where the caller asked, laid
out as checkpointctl and CRI-O read it.

The archive appears whole or not at all: it is written into an unnamed file in the
destination's directory (O_TMPFILE) and linked into place at the end, so a failed or
killed checkpoint leaves nothing there. CRIU writes its images into a work directory
under criproxy's root directory (disk, not tmpfs: the images hold the container's
memory), removed afterwards and swept at start should criproxy have died meanwhile. A
checkpoint that fails or times out leaves the container running: a task CRIU left frozen
is resumed.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import structlog
from google.protobuf import any_pb2

from criproxy import criu
from criproxy._generated.containerd.runc.options import oci_pb2
from criproxy.containers import signing
from criproxy.containers.deps import remove_tree
from criproxy.errors import CriproxyError, FailedPrecondition, InvalidArgument, NotFound

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from criproxy.containerd import Mount
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container

log = structlog.get_logger("criproxy.containers")

DEFAULT_TIMEOUT = 300.0
"""CRI's timeout 0 means the runtime's default."""
_OPTIONS_TYPE_URL = "containerd.runc.v1.CheckpointOptions"

# The archive's members, as checkpointctl names them.
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
STATUS_DUMP = "status.dump"
CHECKPOINT_DIR = "checkpoint"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
DUMP_LOG = "dump.log"
STATS_DUMP = "stats-dump"
CONTAINER_LOG = "container.log"

_KEPT_XATTRS = ("user.", "security.capability", "system.posix_acl_")
"""The extended attributes a layer may carry (as the layer extractor keeps them)."""
_OPAQUE = "trusted.overlay.opaque"


async def checkpoint(
    deps: ContainerDeps, container_id: str, location: str, timeout: float, status_json: bytes
) -> None:
    """`status_json`: the container's CRI status as JSON (status.dump), made by the caller."""
    container = running_container(deps, container_id)
    destination = await anyio.to_thread.run_sync(_destination, location)  # stats the disk
    found = await usable_criu(deps, f"container {container.id}")
    started = time.monotonic()
    with claimed(deps, [container]):
        await capture(deps, container, destination, timeout or DEFAULT_TIMEOUT, status_json)
    log.info(
        "container checkpointed",
        container=container.id,
        sandbox=container.sandbox_id,
        location=str(destination),
        criu=found.version,
        seconds=round(time.monotonic() - started, 3),
    )


@contextlib.contextmanager
def claimed(deps: ContainerDeps, containers: Sequence[Container]) -> Iterator[None]:
    """These containers for one checkpoint; FAILED_PRECONDITION while another has any."""
    busy = [c.id for c in containers if c.id in deps.checkpointing]
    if busy:
        raise FailedPrecondition(f"a checkpoint of container {busy[0]} is under way")
    deps.checkpointing.update(c.id for c in containers)
    try:
        yield
    finally:
        deps.checkpointing.difference_update(c.id for c in containers)


def key_path(deps: ContainerDeps) -> Path:
    configured = deps.config.checkpoint.key_path
    return Path(configured) if configured else deps.config.root / "checkpoint.key"


def running_container(deps: ContainerDeps, container_id: str) -> Container:
    container = deps.store.resolve(container_id)
    if container is None:
        raise NotFound(f"container {container_id!r} not found")
    if container.state != "running":
        raise FailedPrecondition(
            f"container {container.id} is {container.state.upper()}: only a RUNNING "
            "container can be checkpointed"
        )
    return container


async def usable_criu(deps: ContainerDeps, what: str) -> criu.Criu:
    found = await anyio.to_thread.run_sync(criu.cached, deps.config.checkpoint.criu_path)
    if not found.usable:
        raise FailedPrecondition(f"cannot checkpoint {what}: {found.problem}")
    return found


async def capture(
    deps: ContainerDeps, container: Container, destination: Path, timeout: float, status: bytes
) -> None:
    """One container's archive at `destination`: CRIU's dump (the container left running,
    or paused if it was), its writable layer, its dumps and log."""
    work = deps.paths.checkpoint_root / f"{container.id}.{secrets.token_hex(4)}"
    try:
        await anyio.to_thread.run_sync(_make_work_dirs, work)
        checkpointed_at = datetime.datetime.now(datetime.UTC)
        await _dump(deps, container, work, timeout)
        upper = await _upperdir(deps, container.id)
        write = functools.partial(
            _write_archive,
            destination,
            work=work,
            upper=upper,
            container=container,
            spec=deps.store.specs.get(container.id) or {},
            config=_config_dump(container, checkpointed_at),
            status_json=status,
            secret=await anyio.to_thread.run_sync(signing.key, key_path(deps)),
        )
        await anyio.to_thread.run_sync(write)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove_tree, work)


def _destination(location: str) -> Path:
    if not location:
        raise InvalidArgument("location is required: the path of the checkpoint archive to write")
    path = Path(location)
    if not path.is_absolute():
        raise InvalidArgument(f"location {location!r} must be an absolute path")
    if not path.parent.is_dir():
        raise InvalidArgument(f"location {location!r}: directory {path.parent} does not exist")
    if path.is_dir():
        raise InvalidArgument(f"location {location!r} is a directory, not an archive path")
    return path


def _make_work_dirs(work: Path) -> None:
    (work / "images").mkdir(parents=True, mode=0o700)
    (work / "work").mkdir(mode=0o700)


async def _dump(deps: ContainerDeps, container: Container, work: Path, timeout: float) -> None:
    """CRIU's dump through the shim, the container left running; on failure the task is
    thawed should CRIU have left it frozen, and the error names CRIU's last words."""
    options = oci_pb2.CheckpointOptions(
        exit=False,
        open_tcp=True,  # established connections are dumped, not refused
        file_locks=True,
        image_path=str(work / "images"),
        work_path=str(work / "work"),
    )
    tasks = deps.containerd.tasks
    try:
        await tasks.checkpoint(
            container.id,
            any_pb2.Any(type_url=_OPTIONS_TYPE_URL, value=options.SerializeToString()),
            timeout,
        )
    except CriproxyError as err:
        with anyio.CancelScope(shield=True):
            await _thaw(deps, container.id)
        said = await anyio.to_thread.run_sync(_log_tail, work / "work" / DUMP_LOG)
        detail = f"; CRIU's log ends: {said}" if said else ""
        message = f"checkpoint of container {container.id} failed: {err.message}{detail}"
        raise type(err)(message) from None
    except BaseException:  # cancelled: CRIU may have been stopped with the task frozen
        with anyio.CancelScope(shield=True):
            await _thaw(deps, container.id)
        raise


async def _thaw(deps: ContainerDeps, container_id: str) -> None:
    tasks = deps.containerd.tasks
    try:
        state = await tasks.get(container_id)
        if state is not None and state.status in ("paused", "pausing"):
            await tasks.resume(container_id)
            log.warning("container resumed after a failed checkpoint", container=container_id)
    except CriproxyError as err:
        log.warning("container not resumed", container=container_id, error=err.message)


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


async def _upperdir(deps: ContainerDeps, container_id: str) -> Path:
    """The container's writable layer: the overlay mount's upperdir."""
    snapshotter = deps.config.containerd.snapshotter
    upper, _ = overlay_dirs(await deps.containerd.snapshots.mounts(snapshotter, container_id))
    if upper:
        return Path(upper)
    raise FailedPrecondition(
        f"cannot checkpoint container {container_id}: its writable layer is not an overlay "
        f"upper directory (snapshotter {snapshotter}); checkpoints need the overlayfs "
        "snapshotter"
    )


def overlay_dirs(mounts: Sequence[Mount]) -> tuple[str, tuple[str, ...]]:
    """An overlay rootfs's upper directory and lower directories ("" and () for others)."""
    upper, lowers = "", tuple[str, ...]()
    for mount in mounts:
        if mount.type == "overlay":
            for option in mount.options:
                if option.startswith("upperdir="):
                    upper = option.removeprefix("upperdir=")
                elif option.startswith("lowerdir="):
                    lowers = tuple(option.removeprefix("lowerdir=").split(":"))
    return upper, lowers


def _go_time(when: datetime.datetime) -> str:
    """RFC 3339 with nanoseconds' precision, as Go's time.Time encodes in JSON."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _config_dump(container: Container, checkpointed_at: datetime.datetime) -> dict[str, Any]:
    """checkpointctl's ContainerConfig."""
    created = datetime.datetime.fromtimestamp(container.created_at_ns / 1e9, datetime.UTC)
    return {
        "id": container.id,
        "name": container.config.name,
        "rootfsImage": container.config.image,
        "rootfsImageRef": container.image.ref,
        "rootfsImageName": container.image.name,
        "runtime": "io.containerd.runc.v2",
        "createdTime": _go_time(created),
        "checkpointedTime": _go_time(checkpointed_at),
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": False,
    }


def _write_archive(
    destination: Path,
    *,
    work: Path,
    upper: Path,
    container: Container,
    spec: dict[str, Any],
    config: dict[str, Any],
    status_json: bytes,
    secret: bytes,
) -> None:
    """The archive into an unnamed file beside its destination, then linked into place;
    its last member signs the digests of all others. Blocking."""
    files: dict[str, str] = {}

    def add_bytes(name: str, data: bytes) -> None:
        _add_bytes(tar, name, data)
        files[name] = hashlib.sha256(data).hexdigest()

    def add_file(path: Path, name: str) -> None:
        """One read of the file: what is signed is exactly what was written (a log may
        grow meanwhile)."""
        with path.open("rb") as f:
            info = tar.gettarinfo(arcname=name, fileobj=f)
            info.mode = 0o600
            digest = hashlib.sha256()
            tar.addfile(info, _Exact(f, info.size, digest))
        files[name] = digest.hexdigest()

    with _unnamed_file(destination) as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(CONFIG_DUMP, json.dumps(config, indent=2).encode())
            add_bytes(SPEC_DUMP, json.dumps(spec, indent=2).encode())
            add_bytes(STATUS_DUMP, status_json)
            images = work / "images"
            tar.add(images, arcname=CHECKPOINT_DIR, recursive=False)
            for path in sorted(images.iterdir()):
                if path.is_file() and not path.is_symlink():
                    add_file(path, f"{CHECKPOINT_DIR}/{path.name}")
            for name in (DUMP_LOG, STATS_DUMP):
                for where in (work / "work" / name, images / name):
                    if where.is_file():
                        add_file(where, name)
                        break
            diff = work / ROOTFS_DIFF
            deleted = _rootfs_diff(upper, diff)
            add_file(diff, ROOTFS_DIFF)
            if deleted:
                add_bytes(DELETED_FILES, json.dumps(deleted).encode())
            if container.log_path and Path(container.log_path).is_file():
                add_file(Path(container.log_path), CONTAINER_LOG)
            _add_bytes(tar, signing.SIGNATURE, signing.sign(files, secret))
        out.flush()
        os.fsync(out.fileno())


@contextlib.contextmanager
def _unnamed_file(destination: Path) -> Iterator[BinaryIO]:
    """A file in `destination`'s directory that has no name until the block succeeds;
    then it replaces `destination` at once. A file system without O_TMPFILE gets a
    hidden temp name, removed on failure."""
    directory = destination.parent
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
        named = None
    except OSError:
        named = directory / f".{destination.name}.criproxy-{secrets.token_hex(4)}"
        fd = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    out: BinaryIO = os.fdopen(fd, "wb")
    try:
        with out:
            yield out
            if named is None:
                named = directory / f".{destination.name}.criproxy-{secrets.token_hex(4)}"
                # a directory fd makes os.link use linkat(AT_SYMLINK_FOLLOW): the file
                # behind the fd is linked, not /proc's magic link (EXDEV)
                at = os.open(directory, os.O_PATH | os.O_DIRECTORY)
                try:
                    os.link(f"/proc/self/fd/{out.fileno()}", named.name, dst_dir_fd=at)
                finally:
                    os.close(at)
        os.replace(named, destination)
    except BaseException:
        if named is not None:
            with contextlib.suppress(OSError):
                named.unlink()
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _rootfs_diff(upper: Path, out: Path) -> list[str]:
    """The writable layer's changes into `out` as an OCI layer tar (overlay whiteouts as
    `.wh.` entries, opaque directories with `.wh..wh..opq`); the paths it deleted.

    The container runs while this reads its upper directory, so nothing here follows a
    link: the walk holds directory fds (`os.fwalk`), files are opened O_NOFOLLOW and must
    be what lstat saw, and sockets are skipped. A path swapped for a link to the host
    meanwhile is read as the link, never through it."""
    deleted: list[str] = []
    first_names: dict[tuple[int, int], str] = {}
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files, dir_fd in os.fwalk(upper, follow_symlinks=False):
            rel_root = os.path.relpath(root, upper)
            if rel_root != ".":
                info = _info(tar, rel_root, os.fstat(dir_fd))
                tar.addfile(info)
                if _is_opaque(dir_fd):
                    _add_bytes(tar, os.path.join(rel_root, ".wh..wh..opq"), b"")
            dirs.sort()
            for name in sorted(files) + [d for d in dirs if _is_link(dir_fd, d)]:
                arcname = name if rel_root == "." else os.path.join(rel_root, name)
                _add_entry(tar, dir_fd, name, arcname, first_names=first_names, deleted=deleted)
    return deleted


def _is_link(dir_fd: int, name: str) -> bool:
    """fwalk lists a symlink to a directory among the directories, and does not enter it."""
    return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def _add_entry(
    tar: tarfile.TarFile,
    dir_fd: int,
    name: str,
    arcname: str,
    *,
    first_names: dict[tuple[int, int], str],
    deleted: list[str],
) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return  # gone since the listing
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlay's whiteout
        _add_bytes(tar, os.path.join(os.path.dirname(arcname), f".wh.{name}"), b"")
        deleted.append("/" + arcname)
        return
    if stat.S_ISLNK(st.st_mode):
        info = _info(tar, arcname, st)
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
        tar.addfile(info)
        return
    if not stat.S_ISREG(st.st_mode):
        return  # devices, FIFOs and sockets are not carried over (a restore refuses them)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return  # replaced by a link (ELOOP) or gone since the stat
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            return
        info = _info(tar, arcname, now)
        key = (now.st_dev, now.st_ino)
        if now.st_nlink > 1 and key in first_names:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first_names[key], 0
            tar.addfile(info)
            return
        first_names[key] = arcname
        info.pax_headers = {**info.pax_headers, **_xattrs(fd)}
        tar.addfile(info, _Exact(f, info.size))


def _info(tar: tarfile.TarFile, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tar.tarinfo(arcname)
    info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    else:
        info.size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    return info


class _Exact:
    """A file's first `size` bytes, padded with zeros should it shrink meanwhile (the
    header already promised `size`)."""

    def __init__(self, f: BinaryIO, size: int, digest: Any = None) -> None:
        self._f, self._left, self._digest = f, size, digest

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want)
        data += b"\0" * (want - len(data))
        self._left -= want
        if self._digest is not None:
            self._digest.update(data)
        return data


def _xattrs(fd: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if name.startswith(_KEPT_XATTRS):
            with contextlib.suppress(OSError):
                value = os.getxattr(fd, name)
                out[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return out


def _is_opaque(dir_fd: int) -> bool:
    try:
        return os.getxattr(dir_fd, _OPAQUE) == b"y"
    except OSError:
        return False
