"""Restore through CreateContainer: a checkpoint archive (CheckpointContainer's) named as
the container's image, or an image whose manifest says it is a checkpoint (its one layer
holding an archive's files, as `checkpointctl build` makes them), becomes a container
that StartContainer restores with CRIU, its processes continuing where they were.

The archive (or image) is untrusted input, and is treated so:
- It is read with the layer parser (an image: its unpacked layer walked without following
  links): only regular files and directories, under the names a checkpoint has
  (`checkpoint/` one level deep), each at most once, sizes and counts bounded, into a
  directory criproxy makes; nothing in it can name a path outside.
- Every member's SHA-256 must match the manifest signed with this node's checkpoint key
  (see `signing`): an archive no node holding the key made, or one changed after, is
  refused before any of it is used.
- Privileges never come from the archive. A restored process keeps the credentials,
  capabilities, seccomp filters and mounts CRIU saved, so the security settings of the
  checkpointed container's spec must equal those this request gives the new container
  (user, capabilities, no_new_privs, seccomp, AppArmor and SELinux labels, masked and
  read-only paths, namespaces, ID mappings, devices, mounts' destinations and options);
  a request that grants anything else is refused, as it could not be honoured.
- The writable layer's changes go through the layer extractor into the new container's
  own snapshot, confined to it, without device nodes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from criproxy.containers import signing
from criproxy.containers.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_DUMP,
    CONTAINER_LOG,
    DELETED_FILES,
    DUMP_LOG,
    ROOTFS_DIFF,
    SPEC_DUMP,
    STATS_DUMP,
    STATUS_DUMP,
    overlay_dirs,
)
from criproxy.errors import DataLoss, FailedPrecondition, InvalidArgument, Unavailable
from criproxy.images import tar
from criproxy.images.extract import Extractor, supported

if TYPE_CHECKING:
    from pathlib import Path

    from criproxy.containerd import Mount

_FILES = frozenset(
    {
        CONFIG_DUMP,
        SPEC_DUMP,
        STATUS_DUMP,
        ROOTFS_DIFF,
        DELETED_FILES,
        DUMP_LOG,
        STATS_DUMP,
        CONTAINER_LOG,
        signing.SIGNATURE,
    }
)
_SMALL = frozenset({CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, DELETED_FILES, signing.SIGNATURE})
SMALL_MAX = 4 << 20
"""The most a metadata member may hold."""
MAX_MEMBERS = 100_000
MAX_BYTES = 64 << 30
_KINDS = {
    tar.HARDLINK: "hard link",
    tar.SYMLINK: "symbolic link",
    tar.CHAR: "character device",
    tar.BLOCK_DEVICE: "block device",
    tar.FIFO: "FIFO",
}


def archive_path(image: str) -> str:
    """The checkpoint archive a CreateContainer's image names ("" for an image)."""
    return image if image.startswith("/") and os.path.isfile(image) else ""


@dataclass(frozen=True)
class Checkpoint:
    """An unpacked, verified checkpoint."""

    dir: Path
    config: dict[str, Any]
    spec: dict[str, Any]

    @property
    def images(self) -> Path:
        return self.dir / CHECKPOINT_DIR

    @property
    def image_refs(self) -> list[str]:
        """The names the checkpointed container's image went by, most exact first."""
        keys = ("rootfsImageRef", "rootfsImageName", "rootfsImage")
        return [v for k in keys if isinstance(v := self.config.get(k), str) and v]


@dataclass
class _Strict:
    """A tar sink that writes only the members a checkpoint has, and hashes them."""

    dest: Path
    what: str
    """What is being read, for messages ("checkpoint archive PATH", "checkpoint image REF")."""
    digests: dict[str, str] = field(default_factory=dict)
    signature: bytes = b""
    total: int = 0
    _name: str = ""
    _fd: int = -1
    _hash: Any = None
    _kept: bytearray | None = None

    def refuse(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: {why}")

    def begin(self, entry: tar.Entry) -> None:
        name = entry.name.removeprefix("./").rstrip("/")
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise self.refuse(f"member {entry.name!r} is not a plain relative name")
        kind = _KINDS.get(entry.type)
        if kind is not None:
            raise self.refuse(
                f"member {name!r} is a {kind}: only regular files and directories are allowed"
            )
        if entry.type == tar.DIRECTORY:
            if name != CHECKPOINT_DIR:
                raise self.refuse(f"directory {name!r} is not one a checkpoint has")
            (self.dest / CHECKPOINT_DIR).mkdir(mode=0o700, exist_ok=True)
            return
        if entry.type != tar.REGULAR:
            raise self.refuse(f"member {name!r} has tar type {entry.type!r}")
        top = len(parts) == 1 and name in _FILES
        criu_image = len(parts) == 2 and parts[0] == CHECKPOINT_DIR
        if not (top or criu_image):
            raise self.refuse(f"member {name!r} is not one a checkpoint has")
        if name in _SMALL and entry.size > SMALL_MAX:
            raise self.refuse(f"member {name!r} holds {entry.size} bytes, over {SMALL_MAX}")
        self.total += entry.size
        if self.total > MAX_BYTES or len(self.digests) >= MAX_MEMBERS:
            raise self.refuse(f"it holds more than {MAX_MEMBERS} files or {MAX_BYTES} bytes")
        if name in self.digests or (name == signing.SIGNATURE and self.signature):
            raise self.refuse(f"member {name!r} appears twice")
        self._name, self._hash = name, hashlib.sha256()
        if name == signing.SIGNATURE:
            self._kept = bytearray()
            return
        if criu_image:
            (self.dest / CHECKPOINT_DIR).mkdir(mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.dest / name, flags, 0o600)

    def data(self, chunk: memoryview) -> None:
        if self._kept is not None:
            self._kept += chunk
            return
        if self._fd >= 0:
            self._hash.update(chunk)
            while chunk:
                chunk = chunk[os.write(self._fd, chunk) :]

    def end(self) -> None:
        if self._kept is not None:
            self.signature, self._kept = bytes(self._kept), None
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.digests[self._name] = self._hash.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def unpack(archive: str, dest: Path, secret: bytes) -> Checkpoint:
    """The archive's members into `dest` (made here), verified against its signature.
    Blocking; `dest` is the caller's to remove on failure."""
    what = f"checkpoint archive {archive}"
    sink = _sink(dest, what)
    limits = tar.Limits(max_entries=MAX_MEMBERS + 16, max_depth=2, max_path=512)
    try:
        reader = tar.TarReader(sink, limits)
        # never through a link, never blocking on a FIFO swapped in since the path was seen
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidArgument(f"{what} is not a regular file")
            while not reader.done and (chunk := f.read(1 << 20)):
                reader.feed(chunk)
        reader.close()
    except OSError as err:
        raise _os_error(err, what) from None
    except DataLoss as err:
        raise InvalidArgument(f"{what} is refused: {err.message}") from None
    finally:
        sink.close()
    return _verified(sink, what, secret)


def unpack_image(layer: Path, dest: Path, secret: bytes, image: str) -> Checkpoint:
    """A checkpoint image's files (its one layer's directory, from a read-only view) into
    `dest`, under the archive's rules: the image came from a registry, so it is as
    untrusted as an archive. Blocking; `dest` is the caller's to remove on failure."""
    what = f"checkpoint image {image}"
    sink = _sink(dest, what)
    try:
        fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _feed_dir(sink, fd, "")
        finally:
            os.close(fd)
    except OSError as err:
        raise _os_error(err, what) from None
    finally:
        sink.close()
    return _verified(sink, what, secret)


def _sink(dest: Path, what: str) -> _Strict:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest.mkdir(mode=0o700)
    return _Strict(dest, what)


def _os_error(err: OSError, what: str) -> Unavailable | InvalidArgument:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return Unavailable(f"{what} cannot be unpacked: {err}")
    return InvalidArgument(f"{what} cannot be read: {err}")


_FILE_TYPES = (
    (stat.S_ISLNK, tar.SYMLINK),
    (stat.S_ISCHR, tar.CHAR),
    (stat.S_ISBLK, tar.BLOCK_DEVICE),
    (stat.S_ISFIFO, tar.FIFO),
)


def _feed_dir(sink: _Strict, dir_fd: int, prefix: str) -> None:
    """A directory's entries to `sink` as tar members, never following a link; the sink
    refuses any name or kind a checkpoint does not have before anything is read."""
    with os.scandir(dir_fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        member = prefix + name
        kind = next((t for test, t in _FILE_TYPES if test(st.st_mode)), None)
        if stat.S_ISDIR(st.st_mode):
            kind = tar.DIRECTORY
        elif stat.S_ISREG(st.st_mode):
            kind = tar.REGULAR
        elif kind is None:
            raise sink.refuse(f"member {member!r} is a socket: only regular files and directories")
        entry = tar.Entry(member, kind, st.st_size, st.st_mode & 0o7777, 0, 0, st.st_mtime)
        sink.begin(entry)
        if kind == tar.DIRECTORY:
            sink.end()
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                _feed_dir(sink, sub, member + "/")
            finally:
                os.close(sub)
            continue
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
                raise sink.refuse(f"member {member!r} changed while it was read")
            left = st.st_size
            while left and (chunk := f.read(min(left, 1 << 20))):
                sink.data(memoryview(chunk))
                left -= len(chunk)
            if left:
                raise sink.refuse(f"member {member!r} changed while it was read")
        sink.end()


def _verified(sink: _Strict, what: str, secret: bytes) -> Checkpoint:
    """The unpacked checkpoint, if its members are exactly those its signature names."""
    if not sink.signature:
        raise FailedPrecondition(
            f"{what} is not signed: only checkpoints made by a node "
            "holding this node's checkpoint key can be restored"
        )
    try:
        signed = signing.verify(sink.signature, secret)
    except ValueError as err:
        raise FailedPrecondition(f"{what} is refused: {err}") from None
    if signed != sink.digests:
        changed = sorted(set(signed) ^ set(sink.digests)) or sorted(
            n for n in signed if signed[n] != sink.digests.get(n)
        )
        raise FailedPrecondition(
            f"{what} is refused: {', '.join(changed[:5])} differ from what was signed"
        )
    dest = sink.dest
    return Checkpoint(dest, _json(dest, CONFIG_DUMP, what), _json(dest, SPEC_DUMP, what))


def _json(dest: Path, name: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads((dest / name).read_bytes())
    except (OSError, ValueError):
        raise InvalidArgument(f"{what}: {name} is missing or not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: {name} is not a JSON object")
    return value


# --- privileges: the request's, and only if they are the checkpoint's ------------------------

_PROCESS_KEYS = (
    "user",
    "capabilities",
    "noNewPrivileges",
    "apparmorProfile",
    "selinuxLabel",
    "oomScoreAdj",  # CRIU restores it: a Guaranteed pod's -997 must not reach a BestEffort one
    "rlimits",  # CRIU restores them too
)
_LINUX_KEYS = (
    "seccomp",
    "maskedPaths",
    "readonlyPaths",
    "uidMappings",
    "gidMappings",
    "devices",
    "mountLabel",
    "rootfsPropagation",
    "sysctl",
)


def _security(spec: dict[str, Any]) -> dict[str, Any]:
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    out: dict[str, Any] = {f"process.{k}": process.get(k) for k in _PROCESS_KEYS}
    out.update({f"linux.{k}": linux.get(k) for k in _LINUX_KEYS})
    out["linux.resources.devices"] = (linux.get("resources") or {}).get("devices")
    out["linux.namespaces"] = sorted(
        str(ns.get("type")) for ns in linux.get("namespaces") or [] if isinstance(ns, dict)
    )
    out["root.readonly"] = bool((spec.get("root") or {}).get("readonly"))
    out["mounts"] = sorted(
        (str(m.get("destination")), str(m.get("type")), sorted(map(str, m.get("options") or [])))
        for m in spec.get("mounts") or []
        if isinstance(m, dict)
    )
    return out


def security_differences(checkpointed: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The security settings in which the request's spec differs from the checkpointed
    container's (empty: the restored process gets no more than the request grants)."""
    old, new = _security(checkpointed), _security(requested)
    return [
        key
        for key in new
        if json.dumps(old[key], sort_keys=True) != json.dumps(new[key], sort_keys=True)
    ]


# --- the writable layer ---------------------------------------------------------------------


@dataclass
class _NoDevices:
    """The layer extractor, refusing device nodes and FIFOs."""

    inner: Extractor
    what: str

    def begin(self, entry: tar.Entry) -> None:
        kind = _KINDS.get(entry.type)
        if entry.type in (tar.CHAR, tar.BLOCK_DEVICE, tar.FIFO):
            raise InvalidArgument(
                f"{self.what}: {ROOTFS_DIFF} holds a {kind} "
                f"({entry.name!r}); a restored writable layer may not"
            )
        self.inner.begin(entry)

    def data(self, chunk: memoryview) -> None:
        self.inner.data(chunk)

    def end(self) -> None:
        self.inner.end()


def apply_rootfs_diff(checkpoint: Checkpoint, mounts: list[Mount], what: str) -> None:
    """The checkpointed writable layer's changes into the new container's overlay upper
    directory, through the layer extractor (paths confined to it). Blocking."""
    diff = checkpoint.dir / ROOTFS_DIFF
    if not diff.is_file():
        return
    upper, lowers = overlay_dirs(mounts)
    if not upper:
        raise FailedPrecondition("restoring a checkpoint needs the overlayfs snapshotter")
    if not supported():
        raise FailedPrecondition("restoring a checkpoint needs openat2 (Linux >= 5.6)")
    extractor = Extractor(upper, "overlay")
    try:
        reader = tar.TarReader(_NoDevices(extractor, what))
        with diff.open("rb") as f:
            while chunk := f.read(1 << 20):
                reader.feed(chunk)
        reader.close()
        extractor.finish(upper, lowers)
    except DataLoss as err:
        message = f"{what}: {ROOTFS_DIFF} is refused: {err.message}"
        raise InvalidArgument(message) from None
    except OSError as err:
        raise Unavailable(f"{what}: {ROOTFS_DIFF} not applied: {err}") from None
    finally:
        extractor.close()
