"""Writing a layer's entries into a snapshot directory, confined to it.

criproxy runs as root and a layer comes from a registry nobody vouched for, so every
path is resolved by the kernel inside the snapshot (`openat2` with `RESOLVE_IN_ROOT`:
symlinks and `..` cannot leave it), the last component of a path is never followed,
a hardlink's target is resolved the same way, and only the OCI layer format's entry
types and a short list of xattr namespaces are written. The class of bug this rules
out is containerd's CVE-2021-32760 (a chmod through a symlink to a host file).

Whiteouts take one of two forms: `OVERLAY` writes them as overlayfs reads them in an
upper directory (a 0/0 character device, `trusted.overlay.opaque=y`), `REMOVE` deletes
what they name from a directory that holds the parent layers already (the native
snapshotter's copy).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import posixpath
import shutil
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from criproxy.errors import DataLoss, Unavailable
from criproxy.images import tar

if TYPE_CHECKING:
    from collections.abc import Iterator

    from criproxy.images.tar import Entry

Whiteouts = Literal["overlay", "remove"]

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_ALLOWED = (
    "user.",
    "security.capability",
    "system.posix_acl_access",
    "system.posix_acl_default",
)

_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_PARENT_CACHE = 256


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return fn


def open_in_root(root_fd: int, path: bytes, flags: int, mode: int = 0) -> int:
    """`openat2(root_fd, path, flags, RESOLVE_IN_ROOT)`: a path that cannot leave root_fd."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    fd = _syscall()(
        _SYS_OPENAT2,
        ctypes.c_int(root_fd),
        ctypes.c_char_p(path or b"."),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return int(fd)


@functools.cache
def supported() -> bool:
    """Whether this kernel confines lookups (openat2, Linux 5.6); without it, containerd unpacks."""
    root = os.open("/", _O_PATH_DIR)
    try:
        os.close(open_in_root(root, b".", _O_PATH_DIR))
    except OSError:
        return False
    finally:
        os.close(root)
    return True


@dataclass
class _DirTimes:
    path: bytes
    atime: float
    mtime: float


@dataclass
class Extractor:
    """A `tar.Sink` that applies a layer's entries under `root`.

    `finish` completes what can only be done at the end (directory times, attributes of
    directories the layer implied but did not list), possibly in another directory that
    the staged entries were moved to.
    """

    root: str
    whiteouts: Whiteouts
    _root_fd: int = -1
    _parents: dict[bytes, int] = field(default_factory=dict)
    _file: int = -1
    _file_entry: Entry | None = None
    _dirs: list[_DirTimes] = field(default_factory=list)
    implied: set[bytes] = field(default_factory=set)
    """Directories created because an entry lay below them, not listed themselves."""
    unpacked: set[bytes] = field(default_factory=set)
    root_opaque: bool = False

    def __post_init__(self) -> None:
        self._root_fd = os.open(self.root, _O_PATH_DIR | os.O_NOFOLLOW)

    def close(self) -> None:
        if self._file >= 0:
            os.close(self._file)
            self._file = -1
        self._drop_parents()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # --- tar.Sink -------------------------------------------------------------------------

    def begin(self, entry: Entry) -> None:
        rel = _clean(entry.name)
        if rel is None:
            return  # the root itself: containerd ignores it too
        if len(self._parents) >= _PARENT_CACHE:
            self._drop_parents()  # between entries only: an entry's own fds stay open
        parent, base = posixpath.split(rel)
        with _failing(entry):
            self._begin(entry, rel, parent, base)

    def data(self, chunk: memoryview) -> None:
        if self._file < 0:
            return
        with _failing(self._file_entry):
            while chunk:
                n = os.write(self._file, chunk)
                chunk = chunk[n:]

    def end(self) -> None:
        if self._file < 0:
            return
        fd, entry = self._file, self._file_entry
        self._file, self._file_entry = -1, None
        assert entry is not None
        with _failing(entry):
            try:
                os.fchown(fd, entry.uid, entry.gid)
                self._xattrs_fd(fd, entry)
                os.fchmod(fd, stat.S_IMODE(entry.mode))
                os.utime(fd, ns=_times(entry))
            finally:
                os.close(fd)

    # --- entries --------------------------------------------------------------------------

    def _begin(self, entry: Entry, rel: bytes, parent: bytes, base: bytes) -> None:
        if base.startswith(b".wh."):
            self._whiteout(entry, rel, parent, base)
            return
        pfd = self._parent(parent)
        existing = _lstat(pfd, base)
        if existing is not None and not (
            stat.S_ISDIR(existing.st_mode) and entry.type == tar.DIRECTORY
        ):
            self._remove(pfd, rel, existing)
            existing = None
        kind = entry.type
        mode = stat.S_IMODE(entry.mode)
        if kind == tar.REGULAR:
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
            self._unpacked(rel)
            self._file, self._file_entry = fd, entry  # the reader calls end() after the content
            return
        if kind == tar.DIRECTORY:
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.implied.discard(rel)
            fd = os.open(
                base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd
            )
            try:
                os.fchown(fd, entry.uid, entry.gid)
                self._xattrs_fd(fd, entry)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self._dirs.append(_DirTimes(rel, *_seconds(entry)))
            self._unpacked(rel)
            return
        if kind == tar.SYMLINK:
            os.symlink(os.fsencode(entry.linkname), base, dir_fd=pfd)
        elif kind == tar.HARDLINK:
            # the link's own header then sets the shared inode's owner, mode and times,
            # as containerd's applier does
            if self._hardlink(entry, pfd, base):
                self._unpacked(rel)
                return
        elif kind in (tar.CHAR, tar.BLOCK_DEVICE, tar.FIFO):
            fmt = {tar.CHAR: stat.S_IFCHR, tar.BLOCK_DEVICE: stat.S_IFBLK}.get(kind, stat.S_IFIFO)
            os.mknod(base, fmt | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=pfd)
        os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if kind != tar.SYMLINK:
            self._xattrs_path(pfd, base, entry)
            os.chmod(base, mode, dir_fd=pfd)  # just made here, and not a symlink
        os.utime(base, ns=_times(entry), dir_fd=pfd, follow_symlinks=False)
        self._unpacked(rel)

    def _hardlink(self, entry: Entry, pfd: int, base: bytes) -> bool:
        """Link to a file already unpacked, its path resolved inside the root as any;
        True when that file is a symlink (whose attributes stay as they are)."""
        target = _clean(entry.linkname)
        if target is None:
            raise DataLoss(f"layer entry {entry.name!r} is a hard link to the root")
        tparent, tbase = posixpath.split(target)
        try:
            tfd = self._parent(tparent, create=False)
            found = _lstat(tfd, tbase)
        except (FileNotFoundError, NotADirectoryError):
            found = None
        if found is None or stat.S_ISDIR(found.st_mode):
            raise DataLoss(
                f"layer entry {entry.name!r} links to {entry.linkname!r}, which is not a file"
            )
        os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        return stat.S_ISLNK(found.st_mode)

    def _whiteout(self, entry: Entry, rel: bytes, parent: bytes, base: bytes) -> None:
        if base == os.fsencode(_OPAQUE):
            if self.whiteouts == "overlay":
                if not parent:
                    self.root_opaque = True
                    return
                pfd = self._parent(parent)
                fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    os.setxattr(fd, _OVERLAY_OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
                return
            self._clear_below(parent)
            return
        if base.startswith(b".wh..wh."):
            return  # other AUFS metadata: nothing to apply
        name = base[len(b".wh.") :]
        if name in (b"", b".", b".."):
            raise DataLoss(f"layer entry {entry.name!r} is not a valid whiteout")
        pfd = self._parent(parent)
        target = posixpath.join(parent, name) if parent else name
        found = _lstat(pfd, name)
        if found is not None:
            self._remove(pfd, target, found)
        if self.whiteouts == "overlay":
            os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
            os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)

    # --- paths ----------------------------------------------------------------------------

    def _parent(self, rel: bytes, *, create: bool = True) -> int:
        """An O_PATH fd of directory `rel` under root (cached until the next entry), its
        missing directories made (0755, recorded as implied) when `create`."""
        if not rel:
            return self._root_fd
        fd = self._parents.get(rel)
        if fd is not None:
            return fd
        try:
            fd = open_in_root(self._root_fd, rel, _O_PATH_DIR)
        except FileNotFoundError:
            if not create:
                raise
            fd = self._make_dirs(rel)
        self._parents[rel] = fd
        return fd

    def _make_dirs(self, rel: bytes) -> int:
        """Make the missing directories of `rel`, top down; an O_PATH fd of the last."""
        parts = rel.split(b"/")
        up = self._root_fd
        for depth in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:depth])
            try:
                fd = open_in_root(self._root_fd, prefix, _O_PATH_DIR)
            except FileNotFoundError:
                try:
                    os.mkdir(parts[depth - 1], 0o755, dir_fd=up)
                except FileExistsError:
                    found = _lstat(up, parts[depth - 1])
                    if found is not None and stat.S_ISLNK(found.st_mode):
                        raise DataLoss(
                            f"layer entry below {os.fsdecode(prefix)!r} goes through a "
                            "symlink that leads nowhere in the layer"
                        ) from None
                    raise
                self.implied.add(prefix)
                self._unpacked(prefix)
                fd = open_in_root(self._root_fd, prefix, _O_PATH_DIR)
            finally:
                if up != self._root_fd:
                    os.close(up)
            up = fd
        return up

    def _unpacked(self, rel: bytes) -> None:
        """What an opaque marker keeps (only the REMOVE form needs the list)."""
        if self.whiteouts == "remove":
            self.unpacked.add(rel)

    def _clear_below(self, rel: bytes) -> None:
        """An opaque directory in REMOVE form: everything below `rel` that this layer did
        not unpack goes, at any depth."""
        pfd = self._parent(rel)
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            names = [os.fsencode(n) for n in os.listdir(fd)]
        finally:
            os.close(fd)
        for name in names:
            child = posixpath.join(rel, name) if rel else name
            found = _lstat(self._parent(rel), name)
            if found is None:
                continue
            if child not in self.unpacked:
                self._remove(self._parent(rel), child, found)
            elif stat.S_ISDIR(found.st_mode):
                self._clear_below(child)

    def _drop_parents(self, under: bytes | None = None) -> None:
        """Forget cached directory fds (all, or those at and below `under`)."""
        for rel in list(self._parents):
            if under is None or rel == under or rel.startswith(under + b"/"):
                os.close(self._parents.pop(rel))

    def _remove(self, pfd: int, rel: bytes, found: os.stat_result) -> None:
        """Remove `rel` (whose parent is `pfd`), a whole tree if it is a directory, and
        forget what was known at and below it (a cached fd may have gone through it)."""
        name = posixpath.basename(rel)
        self._drop_parents(rel)
        below = rel + b"/"
        self.implied = {p for p in self.implied if p != rel and not p.startswith(below)}
        if stat.S_ISDIR(found.st_mode):
            shutil.rmtree(name, dir_fd=pfd)  # fd-based on Linux: never follows a symlink
        else:
            os.unlink(name, dir_fd=pfd)

    # --- attributes -----------------------------------------------------------------------

    def _xattrs_fd(self, fd: int, entry: Entry) -> None:
        for key, value in entry.xattrs.items():
            if key.startswith(_XATTR_ALLOWED):
                _setxattr(fd, key, value)

    def _xattrs_path(self, pfd: int, base: bytes, entry: Entry) -> None:
        if not entry.xattrs:
            return
        path = f"/proc/self/fd/{pfd}/".encode() + base
        for key, value in entry.xattrs.items():
            if key.startswith(_XATTR_ALLOWED):
                _setxattr(path, key, value)

    def finish(self, root: str | None = None, lowerdirs: tuple[str, ...] = ()) -> None:
        """Directory times, implied directories' attributes, a root-level opaque marker.

        `root` is where the entries are now (when they were moved out of a staging
        directory); `lowerdirs` the layers below, top first, whose directories give an
        implied directory its mode and owner as containerd's applier does.
        """
        if self._file >= 0:
            raise DataLoss("layer tar ended inside a file")
        self._drop_parents()
        if root is not None and root != self.root:
            old, self._root_fd = self._root_fd, -1
            os.close(old)
            self.root = root
            self._root_fd = os.open(root, _O_PATH_DIR | os.O_NOFOLLOW)
        if self.root_opaque:
            os.setxattr(self.root, _OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        for rel in sorted(self.implied):
            self._copy_implied(rel, lowerdirs)
        for d in self._dirs:
            if len(self._parents) >= _PARENT_CACHE:
                self._drop_parents()
            up, base = posixpath.split(d.path)
            try:
                pfd = self._parent(up, create=False)
                os.utime(
                    base,
                    ns=(int(d.atime * 1e9), int(d.mtime * 1e9)),
                    dir_fd=pfd,
                    follow_symlinks=False,
                )
            except FileNotFoundError:
                continue  # removed by a later entry
        self._drop_parents()

    def _copy_implied(self, rel: bytes, lowerdirs: tuple[str, ...]) -> None:
        for lower in lowerdirs:
            lfd = os.open(lower, _O_PATH_DIR | os.O_NOFOLLOW)
            try:
                try:
                    src = open_in_root(lfd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        continue
                    raise
            finally:
                os.close(lfd)
            try:
                st = os.fstat(src)
                try:
                    dst = open_in_root(
                        self._root_fd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                    )
                except OSError:
                    return  # not a directory of this layer any more
                try:
                    # Owner, mode and xattrs; not times: containerd's applier sets them
                    # before the directory fills, so its implied directories carry the
                    # time of the unpacking, and so do these.
                    os.fchown(dst, st.st_uid, st.st_gid)
                    os.fchmod(dst, stat.S_IMODE(st.st_mode))
                    for key in os.listxattr(src):
                        if key.startswith(_XATTR_ALLOWED):
                            _setxattr(dst, key, os.getxattr(src, key))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            return


_NODE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE})


@contextlib.contextmanager
def _failing(entry: Entry | None) -> Iterator[None]:
    """An entry that cannot be written is the layer's fault (DataLoss), unless the node
    is out of space or descriptors: then the pull stops as Unavailable."""
    name = entry.name if entry is not None else "?"
    try:
        yield
    except OSError as err:
        reason = os.strerror(err.errno or 0)
        if err.errno in _NODE_ERRORS:
            raise Unavailable(f"unpacking {name!r}: {reason}") from None
        raise DataLoss(f"layer entry {name!r}: {reason}") from None
    except RecursionError:
        raise DataLoss(f"layer entry {name!r}: its tree is too deep") from None


def move_entries(src: str, dst: str) -> None:
    """Move a staged layer's top-level entries into the (empty) directory it belongs in."""
    sfd = os.open(src, _O_PATH_DIR | os.O_NOFOLLOW)
    dfd = os.open(dst, _O_PATH_DIR | os.O_NOFOLLOW)
    try:
        for name in os.listdir(src):
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
    finally:
        os.close(sfd)
        os.close(dfd)


def _clean(name: str) -> bytes | None:
    """The entry's path relative to the root; None for the root; `..` is refused."""
    path = posixpath.normpath("/" + name).lstrip("/")
    if ".." in name.split("/"):
        raise DataLoss(f"layer entry {name!r} climbs out of the layer")
    if path in ("", "."):
        return None
    return os.fsencode(path)


def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _times(entry: Entry) -> tuple[int, int]:
    atime, mtime = _seconds(entry)
    return int(atime * 1e9), int(mtime * 1e9)


def _seconds(entry: Entry) -> tuple[float, float]:
    mtime = min(max(entry.mtime, 0.0), 2**33)
    atime = mtime if entry.atime is None else min(max(entry.atime, mtime), 2**33)
    return atime, mtime


def _setxattr(target: int | bytes, key: str, value: bytes) -> None:
    """Set one xattr (never through a symlink); a filesystem without that namespace skips it
    (as containerd does)."""
    try:
        if isinstance(target, int):
            os.setxattr(target, key, value)
        else:
            os.setxattr(target, key, value, follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
