"""One pass over a layer as it downloads: digest, decompress, diff id, unpack.

The compressed bytes are hashed for the manifest's digest, decompressed (gzip through
ISA-L, zstd, or none, told apart by their magic as containerd's `DecompressStream`
does), hashed again for the config's diff id, and parsed into entries that an
`Extractor` writes. Both digests are checked when the stream ends; the caller commits
the snapshot only then, so a layer that fails verification is never used.

`feed` and `finish` are blocking (hashing, inflating and writing release the GIL for
most of their time) and run in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Protocol, TypeAlias

from isal import isal_zlib

from criproxy.errors import DataLoss, FailedPrecondition
from criproxy.images.tar import Limits, TarReader

if TYPE_CHECKING:
    from collections.abc import Callable

    from criproxy.containerd.types import Descriptor
    from criproxy.images.extract import Extractor

_IsalError: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # a class, stubbed as an instance
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
)
_LAYER_SUFFIXES = ("", "+gzip", "+zstd", ".gzip", ".zstd")


def can_stream(media_type: str) -> bool:
    """Whether criproxy unpacks this layer type itself (else containerd's differ does)."""
    return any(media_type == t + s for t in _LAYER_TYPES for s in _LAYER_SUFFIXES)


_OUT = 256 * 1024
"""Uncompressed bytes produced at a time: a bomb never lands in memory whole."""

Emit: TypeAlias = "Callable[[bytes], None]"


class _Decompressor(Protocol):
    def feed(self, data: bytes, emit: Emit) -> None: ...

    def finish(self) -> None: ...


class _Plain:
    def feed(self, data: bytes, emit: Emit) -> None:
        emit(data)

    def finish(self) -> None:
        pass


class _Gzip:
    """Concatenated gzip members, as Go's reader (and so containerd) reads them."""

    def __init__(self) -> None:
        self._d = isal_zlib.decompressobj(31)

    def feed(self, data: bytes, emit: Emit) -> None:
        while True:
            out = self._d.decompress(data, _OUT)
            if out:
                emit(out)
            if self._d.eof:
                data = self._d.unused_data
                if not data:
                    return
                self._d = isal_zlib.decompressobj(31)  # the next member
                continue
            data = self._d.unconsumed_tail
            if not data and len(out) < _OUT:
                return

    def finish(self) -> None:
        if not self._d.eof:
            raise DataLoss("gzip stream is truncated")


class _Zstd:
    """zstd frames one after another. A truncated stream shows as a short tar or a wrong
    diff id (the writer API has no end-of-frame flag)."""

    def __init__(self) -> None:
        import zstandard  # only layers that need it pay for the import

        self._emit: Emit | None = None
        self._w = zstandard.ZstdDecompressor().stream_writer(
            self,  # type: ignore[arg-type]  # anything with write() will do
            write_size=_OUT,
            write_return_read=True,
        )

    def write(self, out: bytes) -> int:
        assert self._emit is not None
        self._emit(out)
        return len(out)

    def feed(self, data: bytes, emit: Emit) -> None:
        self._emit = emit
        self._w.write(data)

    def finish(self) -> None:
        pass


class LayerStream:
    """The bytes of one layer on their way into a snapshot.

    Once the content fails to decompress or parse, the rest is only hashed: the error
    reported at the end is the digest mismatch when the registry sent the wrong bytes,
    and the content's own fault only when the bytes are what the manifest names.
    """

    def __init__(
        self, desc: Descriptor, diff_id: str, extractor: Extractor, limits: Limits | None = None
    ) -> None:
        if not can_stream(desc.media_type):
            raise FailedPrecondition(f"layer {desc.digest} has unsupported type {desc.media_type}")
        self.desc = desc
        self.diff_id = diff_id
        self.extractor = extractor
        self.received = 0
        self._compressed = hashlib.sha256()
        self._uncompressed = hashlib.sha256()
        self._decompressor: _Decompressor | None = None
        self._head = b""
        self._tar = TarReader(extractor, limits)
        self._failed: DataLoss | None = None
        limits = limits or Limits()
        self.unpacked = 0
        self.max_unpacked = max(limits.min_unpacked, desc.size * limits.max_expansion)

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.desc.size:
            raise DataLoss(f"layer {self.desc.digest}: more than its {self.desc.size} bytes")
        self._compressed.update(chunk)
        if self._failed is not None:
            return
        if self._decompressor is None:
            self._head += chunk
            if len(self._head) < len(_ZSTD_MAGIC) and self.received < self.desc.size:
                return
            chunk, self._head = self._head, b""
            self._decompressor = _pick(chunk)
        self._unpack(chunk)

    def finish(self) -> None:
        """All bytes are in: check both digests and that the tar ended cleanly."""
        if self.received != self.desc.size:
            raise DataLoss(
                f"layer {self.desc.digest}: {self.received} of {self.desc.size} bytes arrived"
            )
        digest = "sha256:" + self._compressed.hexdigest()
        if digest != self.desc.digest:
            raise DataLoss(
                f"layer {self.desc.digest}: the registry sent bytes with digest {digest}"
            )
        if self._decompressor is None:  # a blob shorter than any magic
            self._decompressor = _pick(self._head)
            self._unpack(self._head)
        if self._failed is None:
            self._unpack(None)
        if self._failed is not None:
            raise self._failed
        diff = "sha256:" + self._uncompressed.hexdigest()
        if diff != self.diff_id:
            raise DataLoss(
                f"wrong diff id {diff} calculated on extraction of layer {self.desc.digest}; "
                f"the image config says {self.diff_id}"
            )

    def _unpack(self, chunk: bytes | None) -> None:
        """Decompress and apply a chunk (None: the end of the stream)."""
        assert self._decompressor is not None
        try:
            if chunk is None:
                self._decompressor.finish()
                self._tar.close()
                return
            self._decompressor.feed(chunk, self._untar)
        except (_IsalError, ValueError, _zstd_error()) as err:
            self._failed = DataLoss(f"layer {self.desc.digest} is corrupt: {err}")
        except DataLoss as err:
            self._failed = DataLoss(f"layer {self.desc.digest}: {err.message}")

    def _untar(self, out: bytes) -> None:
        self.unpacked += len(out)
        if self.unpacked > self.max_unpacked:
            raise DataLoss(
                f"unpacks to more than {self.max_unpacked} bytes "
                f"({self.max_unpacked // max(self.desc.size, 1)}x its size)"
            )
        self._uncompressed.update(out)
        self._tar.feed(out)


@functools.cache
def _zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def _pick(head: bytes) -> _Decompressor:
    """By the stream's magic, as containerd's DecompressStream does."""
    if head.startswith(_GZIP_MAGIC):
        return _Gzip()
    if head.startswith(_ZSTD_MAGIC):
        return _Zstd()
    return _Plain()
