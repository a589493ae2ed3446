"""A push parser for layer tars: bytes go in as they arrive, entries come out.

A layer is untrusted input, so nothing here trusts a size: extension headers (PAX, GNU
long names) are bounded before they are buffered, entries are counted, and a header
that does not check out ends the layer. File contents pass straight through to the
sink in the pieces they arrived in, so memory stays flat whatever a file's size.
"""

from __future__ import annotations

import math
import tarfile
from dataclasses import dataclass, field
from typing import Protocol

from criproxy.errors import DataLoss

BLOCK = 512

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_CONTIGUOUS = b"7"
_PAX = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"

_PAX_XATTR = "SCHILY.xattr."
_USTAR = b"ustar\x0000"


@dataclass(frozen=True)
class Limits:
    """What one layer may hold; a layer beyond any of these is refused."""

    max_entries: int = 1_000_000
    max_header: int = 1 << 20
    """Bytes of PAX and GNU long-name headers before one entry, together."""
    max_path: int = 4096
    max_depth: int = 256
    max_xattr_value: int = 64 * 1024
    max_expansion: int = 2000
    """Uncompressed bytes per compressed byte. gzip cannot exceed ~1,032; a zstd bomb of a
    few MiB can unpack to terabytes of zeros; real layers stay far below either."""
    min_unpacked: int = 1 << 30
    """What any layer may unpack to, whatever its compressed size."""


@dataclass
class Entry:
    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    atime: float | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


class Sink(Protocol):
    def begin(self, entry: Entry) -> None: ...

    def data(self, chunk: memoryview) -> None: ...

    def end(self) -> None: ...


class TarReader:
    """Parses a tar stream fed in arbitrary pieces and drives a `Sink`."""

    def __init__(self, sink: Sink, limits: Limits | None = None) -> None:
        self._sink = sink
        self._limits = limits or Limits()
        self._pending = bytearray()  # a header block, or an extension header, being gathered
        self._need = BLOCK
        self._ext: bytes | None = None  # the kind of extension header being gathered
        self._ext_size = 0
        self._ext_total = 0  # extension header bytes before the current entry
        self._data_left = 0  # content bytes of the current entry still to come
        self._skip = 0  # padding (or ignored content) still to drop
        self._pax: dict[str, bytes] = {}
        self._longname: str | None = None
        self._longlink: str | None = None
        self.entries = 0
        self.done = False

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.done:
                return  # what follows the end-of-archive blocks is ignored
            if self._data_left:
                n = min(self._data_left, len(view))
                self._sink.data(view[:n])
                self._data_left -= n
                view = view[n:]
                if not self._data_left:
                    self._sink.end()
                continue
            if self._skip:  # the padding after a file's content
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            n = min(self._need - len(self._pending), len(view))
            self._pending += view[:n]
            view = view[n:]
            if len(self._pending) == self._need:
                block = bytes(self._pending)
                self._pending.clear()
                self._need = BLOCK
                if self._ext is not None:
                    self._extension(self._ext, block)
                else:
                    self._header(block)

    def close(self) -> None:
        """The stream ended: only a clean end (between entries) is accepted."""
        if self.done:
            return
        if self._data_left or self._skip or self._pending or self._ext is not None:
            raise DataLoss("layer tar is truncated")
        self.done = True

    def _header(self, block: bytes) -> None:
        if block.count(0) == BLOCK:
            self.done = True  # end of archive (one zero block is enough, as Go's reader)
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise DataLoss(f"layer tar has a bad header: {err}") from None
        kind = info.type
        size = info.size
        if kind in (_PAX, _GNU_LONGNAME, _GNU_LONGLINK, _PAX_GLOBAL):
            self._ext_total += max(size, 0)
            if size < 0 or self._ext_total > self._limits.max_header:
                raise DataLoss(
                    f"layer tar has more than {self._limits.max_header} bytes of extension "
                    "headers for one entry"
                )
            if size == 0:
                return
            self._ext = kind
            self._need = _padded(size)
            self._ext_size = size
            return
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise DataLoss(f"layer tar has more than {self._limits.max_entries} entries")
        if kind == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse") for k in self._pax):
            raise DataLoss(f"layer tar has a sparse file ({info.name}); sparse files are refused")
        pax, self._pax = self._pax, {}
        self._ext_total = 0
        if self._longname is not None:
            name = self._longname
        elif block[257:265] == _USTAR:
            name = info.name  # with the ustar prefix (only real ustar headers have one)
        else:
            name = _nts(block[0:100])  # Python's reader adds a prefix to any format
        linkname = self._longlink if self._longlink is not None else info.linkname
        self._longname = self._longlink = None
        entry = Entry(
            name=name,
            type=REGULAR if kind in (tarfile.AREGTYPE, _CONTIGUOUS) else kind,
            size=size,
            mode=info.mode,
            uid=info.uid,
            gid=info.gid,
            mtime=float(info.mtime),
            linkname=linkname,
            devmajor=info.devmajor,
            devminor=info.devminor,
        )
        if pax:
            self._apply_pax(entry, pax)
        if block[156:157] == b"\0" and entry.name.endswith("/"):
            entry.type = DIRECTORY  # as Go's reader: an old-style file named like a directory
        self._check(entry)
        if entry.type not in (REGULAR, HARDLINK, SYMLINK, CHAR, BLOCK_DEVICE, DIRECTORY, FIFO):
            raise DataLoss(f"layer tar entry {entry.name!r} has unsupported type {kind!r}")
        # Only regular files carry content; other types are header-only whatever their
        # size field says (as Go's and Python's readers treat them).
        self._sink.begin(entry)
        if entry.type == REGULAR and entry.size:
            self._data_left = entry.size
            self._skip = _padded(entry.size) - entry.size
        else:
            self._sink.end()

    def _check(self, entry: Entry) -> None:
        """What Go's reader refuses, and what this project bounds."""
        limits = self._limits
        if len(entry.name) > limits.max_path or len(entry.linkname) > limits.max_path:
            raise DataLoss(f"layer tar has a path longer than {limits.max_path} bytes")
        if entry.name.count("/") > limits.max_depth:
            raise DataLoss(f"layer tar has a path deeper than {limits.max_depth} directories")
        if "\0" in entry.name or "\0" in entry.linkname:
            raise DataLoss(f"layer tar entry {entry.name!r} has a NUL in its name or link")
        if min(entry.size, entry.uid, entry.gid, entry.devmajor, entry.devminor) < 0:
            raise DataLoss(f"layer tar entry {entry.name!r} has a negative number")
        if not math.isfinite(entry.mtime) or (
            entry.atime is not None and not math.isfinite(entry.atime)
        ):
            raise DataLoss(f"layer tar entry {entry.name!r} has a time that is not a number")

    def _extension(self, kind: bytes, block: bytes) -> None:
        self._ext = None
        body = block[: self._ext_size]
        if kind == _GNU_LONGNAME:
            self._longname = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == _GNU_LONGLINK:
            self._longlink = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == _PAX:
            self._pax.update(_parse_pax(body))
        # global PAX headers carry nothing a layer needs; they are dropped

    def _apply_pax(self, entry: Entry, pax: dict[str, bytes]) -> None:
        for key, raw in pax.items():
            if key.startswith(_PAX_XATTR):
                if len(raw) > self._limits.max_xattr_value:
                    raise DataLoss(f"layer tar entry {entry.name!r} has an oversized xattr")
                entry.xattrs[key[len(_PAX_XATTR) :]] = raw
                continue
            value = raw.decode("utf-8", "surrogateescape")
            try:
                if key == "path":
                    entry.name = value
                elif key == "linkpath":
                    entry.linkname = value
                elif key == "size":
                    entry.size = int(value)
                elif key == "uid":
                    entry.uid = int(value)
                elif key == "gid":
                    entry.gid = int(value)
                elif key == "mtime":
                    entry.mtime = float(value)
                elif key == "atime":
                    entry.atime = float(value)
            except ValueError:
                raise DataLoss(f"layer tar has a bad PAX {key} record: {value!r}") from None


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _parse_pax(body: bytes) -> dict[str, bytes]:
    """`<length> <key>=<value>\\n` records; a malformed one ends the layer."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(body):
        if body[pos] == 0:
            break
        space = body.find(b" ", pos)
        if space < 0:
            raise DataLoss("layer tar has a malformed PAX header")
        try:
            length = int(body[pos:space])
        except ValueError:
            raise DataLoss("layer tar has a malformed PAX header") from None
        end = pos + length
        if length <= space - pos or end > len(body) or body[end - 1 : end] != b"\n":
            raise DataLoss("layer tar has a malformed PAX header")
        key, sep, value = body[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise DataLoss("layer tar has a malformed PAX header")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records
