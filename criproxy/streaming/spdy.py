"""SPDY/3.1 for the streaming server: framing, header compression, flow control.

Two layers. `FrameEncoder` and `FrameDecoder` turn frames into bytes and back with no I/O.
The decoder parses incrementally from whatever it has been fed (a frame may arrive in any
number of pieces) and hands out a long DATA payload in pieces as they arrive, so it never
holds more than one read. Each owns the zlib context of its direction: SPDY/3 compresses all
header blocks of a connection as one stream, primed with the spec's dictionary and
sync-flushed after each block; inflating is bounded (a zlib bomb ends the connection).

`SpdyConnection` runs them over an anyio byte stream the way moby/spdystream (what the
kubelet, kubectl, crictl and critest use) expects. One task reads (`run()`); frames are
written whole under one lock; each stream buffers what it received up to a bound, and the
reader stops reading the transport while a buffer is full, so a peer that outruns the
application is held back by TCP. spdystream ignores WINDOW_UPDATE and never sends one, so
the peer's windows are honoured only once it has shown it keeps them (a WINDOW_UPDATE or a
SETTINGS INITIAL_WINDOW_SIZE). Our receive windows are as large as those buffers (announced
with the first frames we write) and are returned as the application consumes, in steps of
half a window so that a peer that ignores them gets few of them.
"""

from __future__ import annotations

import contextlib
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

import anyio
import anyio.lowlevel
import structlog

from criproxy.streaming.gone import CLIENT_GONE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from anyio.abc import ByteStream

log = structlog.get_logger("criproxy.streaming.spdy")

VERSION: Final = 3

SYN_STREAM: Final = 1
SYN_REPLY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PING: Final = 6
GOAWAY: Final = 7
HEADERS: Final = 8
WINDOW_UPDATE: Final = 9

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02
FLAG_SETTINGS_CLEAR: Final = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR: Final = 1
INVALID_STREAM: Final = 2
REFUSED_STREAM: Final = 3
UNSUPPORTED_VERSION: Final = 4
CANCEL: Final = 5
INTERNAL_ERROR: Final = 6
FLOW_CONTROL_ERROR: Final = 7
STREAM_IN_USE: Final = 8
STREAM_ALREADY_CLOSED: Final = 9
FRAME_TOO_LARGE: Final = 11

# GOAWAY status codes.
GOAWAY_OK: Final = 0
GOAWAY_PROTOCOL_ERROR: Final = 1
GOAWAY_INTERNAL_ERROR: Final = 2

SETTINGS_MAX_CONCURRENT_STREAMS: Final = 4
SETTINGS_INITIAL_WINDOW_SIZE: Final = 7

MAX_STREAM_ID: Final = 0x7FFFFFFF
MAX_WINDOW: Final = 0x7FFFFFFF
MAX_FRAME_LENGTH: Final = 0xFFFFFF
DEFAULT_WINDOW: Final = 64 * 1024
"""The initial stream window (SPDY/3) and connection window (SPDY/3.1), both directions."""
MAX_DATA_FRAME: Final = 256 * 1024
"""The largest DATA payload written: large frames for throughput, well under 16 MiB."""
STREAM_BUFFER: Final = 1024 * 1024
"""Received bytes one stream holds before the reader stops reading the transport; also the
receive window we give each stream (SETTINGS INITIAL_WINDOW_SIZE, sent at the start)."""
CONNECTION_BUFFER: Final = 4 * 1024 * 1024
"""Received bytes all streams together hold before the reader stops reading; also our
connection receive window (raised from 64 KiB by a WINDOW_UPDATE sent at the start)."""
READ_SIZE: Final = 256 * 1024
CLOSE_TIMEOUT: Final = 2.0
"""How long `aclose()` waits for the peer to close after our GOAWAY (it flushes our data)."""

_DATA_PIECE = 16 * 1024
"""The decoder hands out a partial DATA payload once it has this much of it."""
_HEADER_SLACK = 4096
"""Deflate may grow incompressible input a little: control frames may exceed the header cap
by this much before they are refused unread."""
_DEFLATE_WBITS = 12
_DEFLATE_MEMLEVEL = 6
"""A 4 KiB window holds the 1423-byte dictionary and a few header blocks: 32 KiB of state per
connection instead of zlib's default 256 KiB."""

_CONTROL_BIT = 0x80000000
_FRAME_HEADER = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")
_SYN_STREAM_FIXED = struct.Struct(">IIBB")

# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): each of these words
# preceded by its length as 4 bytes big endian, then the tail as is; 1423 bytes, Adler-32
# 0xe3c6a7c2 (the dictionary id in every header block's zlib header).
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)  # fmt: skip
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct"
    " Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
HEADER_DICTIONARY: Final = b"".join(
    _U32.pack(len(word)) + word.encode("ascii") for word in _DICTIONARY_WORDS
) + _DICTIONARY_TAIL.encode("ascii")

_FORBIDDEN_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding"}
)
"""Hop-by-hop headers that SPDY/3 forbids in a header block ("host" too, in SYN_STREAM)."""


class SpdyProtocolError(Exception):
    """The peer broke the protocol so that the connection cannot go on: it is closed (after a
    GOAWAY carrying `status`)."""

    def __init__(self, message: str, status: int = GOAWAY_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


class SpdyStreamError(Exception):
    """The peer broke the protocol on one stream: that stream is reset with `status` and the
    connection goes on (the frame was consumed whole, the zlib context is intact)."""

    def __init__(self, message: str, stream_id: int, status: int, frame_type: int) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status
        self.frame_type = frame_type


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: Mapping[str, str]
    flags: int = 0
    associated_id: int = 0
    priority: int = 0
    slot: int = 0


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: Mapping[str, str]
    flags: int = 0


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    values: Mapping[int, int] = field(default_factory=dict)
    """Setting id -> value (the per-entry persistence flags are obsolete and not kept)."""
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True, slots=True)
class Headers:
    stream_id: int
    headers: Mapping[str, str]
    flags: int = 0


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class Data:
    """A DATA frame, or from the decoder a piece of one (only the last piece carries FIN)."""

    stream_id: int
    data: bytes
    flags: int = 0


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | Headers | WindowUpdate | Data


def data_frame_header(stream_id: int, length: int, flags: int = 0) -> bytes:
    """The 8 bytes before a DATA payload (written apart so the payload is never copied)."""
    if not 0 < stream_id <= MAX_STREAM_ID or not 0 <= length <= MAX_FRAME_LENGTH:
        raise ValueError(f"bad DATA frame: stream {stream_id}, {length} bytes")
    return _FRAME_HEADER.pack(stream_id, flags << 24 | length)


def _encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _header_block(headers: Mapping[str, str]) -> bytes:
    """The uncompressed name/value block; names lower-cased, each once, none empty."""
    parts = [_U32.pack(len(headers))]
    seen: set[str] = set()
    for name, value in headers.items():
        key = name.lower()
        if not key or key in seen:
            raise ValueError(f"header name {name!r} is empty or given twice")
        seen.add(key)
        raw_name, raw_value = _encode_text(key), _encode_text(value)
        parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def _parse_header_block(raw: bytes, stream_id: int, frame_type: int) -> dict[str, str]:
    def malformed(why: str) -> SpdyStreamError:
        return SpdyStreamError(
            f"header block of stream {stream_id}: {why}", stream_id, PROTOCOL_ERROR, frame_type
        )

    def text(pos: int) -> tuple[str, int]:
        if pos + 4 > len(raw):
            raise malformed("truncated")
        (length,) = _U32.unpack_from(raw, pos)
        end = pos + 4 + length
        if end > len(raw):
            raise malformed("truncated")
        return raw[pos + 4 : end].decode("utf-8", "surrogateescape"), end

    if len(raw) < 4:
        raise malformed("truncated")
    (count,) = _U32.unpack_from(raw)
    if count > (len(raw) - 4) // 8:
        raise malformed(f"{count} pairs cannot fit in {len(raw)} bytes")
    headers: dict[str, str] = {}
    pos = 4
    for _ in range(count):
        name, pos = text(pos)
        value, pos = text(pos)
        name = name.lower()  # spdystream lower-cases too; SPDY/3 wants lower case
        if not name:
            raise malformed("empty header name")
        if name in headers:
            raise malformed(f"header {name!r} given twice")
        headers[name] = value
    if pos != len(raw):
        raise malformed("trailing bytes")
    forbidden = _FORBIDDEN_HEADERS | ({"host"} if frame_type == SYN_STREAM else set())
    if bad := forbidden.intersection(headers):
        raise SpdyStreamError(
            f"forbidden headers {sorted(bad)}", stream_id, PROTOCOL_ERROR, frame_type
        )
    return headers


class FrameEncoder:
    """Frames to bytes. Owns the header compression context of the sending direction, so
    header blocks must be encoded in the order their frames are written."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION,
            zlib.DEFLATED,
            _DEFLATE_WBITS,
            _DEFLATE_MEMLEVEL,
            zdict=HEADER_DICTIONARY,
        )

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(stream_id, data, flags):
                return data_frame_header(stream_id, len(data), flags) + bytes(data)
            case SynStream(stream_id, headers, flags, associated_id, priority, slot):
                _check_stream_id(stream_id)
                fixed = _SYN_STREAM_FIXED.pack(stream_id, associated_id, priority << 5, slot)
                return self._control(SYN_STREAM, flags, fixed + self._compress(headers))
            case SynReply(stream_id, headers, flags):
                _check_stream_id(stream_id)
                block = self._compress(headers)
                return self._control(SYN_REPLY, flags, _U32.pack(stream_id) + block)
            case Headers(stream_id, headers, flags):
                _check_stream_id(stream_id)
                block = self._compress(headers)
                return self._control(HEADERS, flags, _U32.pack(stream_id) + block)
            case RstStream(stream_id, status):
                _check_stream_id(stream_id)
                return self._control(RST_STREAM, 0, _U32_PAIR.pack(stream_id, status))
            case Settings(values, flags):
                entries = b"".join(_U32_PAIR.pack(k, v) for k, v in values.items())
                return self._control(SETTINGS, flags, _U32.pack(len(values)) + entries)
            case Ping(ping_id):
                return self._control(PING, 0, _U32.pack(ping_id))
            case GoAway(last_good_stream_id, status):
                return self._control(GOAWAY, 0, _U32_PAIR.pack(last_good_stream_id, status))
            case WindowUpdate(stream_id, delta):
                if not 0 < delta <= MAX_WINDOW:
                    raise ValueError(f"bad window delta {delta}")
                return self._control(WINDOW_UPDATE, 0, _U32_PAIR.pack(stream_id, delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    def _compress(self, headers: Mapping[str, str]) -> bytes:
        block = _header_block(headers)  # validates before the context moves
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_FRAME_LENGTH:
            raise ValueError(f"control frame of {len(payload)} bytes")
        word = _CONTROL_BIT | VERSION << 16 | frame_type
        return _FRAME_HEADER.pack(word, flags << 24 | len(payload)) + payload


def _check_stream_id(stream_id: int) -> None:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"bad stream id {stream_id}")


class FrameDecoder:
    """Bytes to frames, incrementally: `feed()` what was read, then take `next_frame()` until
    it returns None. Owns the header decompression context of the receiving direction.

    Raises `SpdyProtocolError` for what ends the connection (bad framing, a header block that
    does not inflate or inflates past `max_header_block`) and `SpdyStreamError` for a frame
    that was consumed whole but is bad for its stream. Unknown control frame types are
    skipped, as SPDY/3 asks.
    """

    def __init__(self, *, max_header_block: int = 256 * 1024) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max_header_block = max_header_block
        self._max_control = min(max_header_block + _HEADER_SLACK, MAX_FRAME_LENGTH)
        self._skip = 0
        self._data_stream = 0
        self._data_left = 0
        self._data_flags = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet handed out."""
        return len(self._buf)

    @property
    def mid_frame(self) -> bool:
        """True if the input so far ends inside a frame (a truncated frame at EOF)."""
        return bool(self._buf) or self._data_left > 0 or self._skip > 0

    def next_frame(self) -> Frame | None:
        while True:
            if self._skip:
                skipped = min(self._skip, len(self._buf))
                del self._buf[:skipped]
                self._skip -= skipped
                if self._skip:
                    return None
            if self._data_stream:
                return self._data_piece()
            if len(self._buf) < 8:
                return None
            first, second = _FRAME_HEADER.unpack_from(self._buf)
            flags, length = second >> 24, second & MAX_FRAME_LENGTH
            if not first & _CONTROL_BIT:
                if first == 0:
                    raise SpdyProtocolError("DATA frame on stream 0")
                del self._buf[:8]
                self._data_stream, self._data_left, self._data_flags = first, length, flags
                continue
            version, frame_type = first >> 16 & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise SpdyProtocolError(f"SPDY version {version} (want {VERSION})")
            if frame_type not in _CONTROL_TYPES:
                del self._buf[:8]
                self._skip = length
                continue
            if length > self._max_control:
                raise SpdyProtocolError(f"control frame of {length} bytes", GOAWAY_PROTOCOL_ERROR)
            if len(self._buf) < 8 + length:
                return None
            payload = self._take(8 + length)[8:]
            return self._control(frame_type, flags, payload)

    def _take(self, n: int) -> bytes:
        with memoryview(self._buf) as view, view[:n] as head:
            out = bytes(head)
        del self._buf[:n]
        return out

    def _data_piece(self) -> Data | None:
        have, left = len(self._buf), self._data_left
        if have >= left:
            piece, last = self._take(left), True
        elif have >= _DATA_PIECE:
            piece, last = self._take(have), False
        else:
            return None
        stream_id, flags = self._data_stream, self._data_flags
        self._data_left -= len(piece)
        if last:
            self._data_stream = 0
        return Data(stream_id, piece, flags if last else 0)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        size = len(payload)
        if frame_type == SYN_STREAM:
            _need(size >= 10, "SYN_STREAM", size)
            stream_id, associated, priority, slot = _SYN_STREAM_FIXED.unpack_from(payload)
            stream_id &= MAX_STREAM_ID
            headers = self._headers(payload[10:], stream_id, frame_type)
            return SynStream(
                stream_id, headers, flags, associated & MAX_STREAM_ID, priority >> 5, slot
            )
        if frame_type in (SYN_REPLY, HEADERS):
            _need(size >= 4, "SYN_REPLY/HEADERS", size)
            stream_id = _U32.unpack_from(payload)[0] & MAX_STREAM_ID
            headers = self._headers(payload[4:], stream_id, frame_type)
            if frame_type == SYN_REPLY:
                return SynReply(stream_id, headers, flags)
            return Headers(stream_id, headers, flags)
        if frame_type == SETTINGS:
            _need(size >= 4, "SETTINGS", size)
            (count,) = _U32.unpack_from(payload)
            _need(size == 4 + 8 * count, "SETTINGS", size)
            values = {}
            for i in range(count):
                ident, value = _U32_PAIR.unpack_from(payload, 4 + 8 * i)
                values[ident & 0xFFFFFF] = value
            return Settings(values, flags)
        if frame_type == PING:
            _need(size == 4, "PING", size)
            return Ping(_U32.unpack(payload)[0])
        # RST_STREAM, GOAWAY, WINDOW_UPDATE: two words
        _need(size == 8, _TYPE_NAMES[frame_type], size)
        word, value = _U32_PAIR.unpack(payload)
        stream_id = word & MAX_STREAM_ID
        if frame_type == GOAWAY:
            return GoAway(stream_id, value)
        if frame_type == RST_STREAM:
            if stream_id == 0 or value == 0:
                raise SpdyProtocolError(f"RST_STREAM of stream {stream_id}, status {value}")
            return RstStream(stream_id, value)
        delta = value & MAX_WINDOW
        if delta == 0:
            raise SpdyProtocolError(f"WINDOW_UPDATE of 0 for stream {stream_id}")
        return WindowUpdate(stream_id, delta)

    def _headers(self, block: bytes, stream_id: int, frame_type: int) -> dict[str, str]:
        raw = self._inflate_block(block)  # always: the shared context must see every block
        if stream_id == 0:
            raise SpdyProtocolError(f"{_TYPE_NAMES[frame_type]} on stream 0")
        return _parse_header_block(raw, stream_id, frame_type)

    def _inflate_block(self, block: bytes) -> bytes:
        limit = self._max_header_block
        out: list[bytes] = []
        total = 0
        pending = block
        try:
            while True:
                budget = limit - total + 1
                chunk = self._inflate.decompress(pending, budget)
                out.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise SpdyProtocolError(f"header block inflates past {limit} bytes")
                pending = self._inflate.unconsumed_tail
                if not pending and len(chunk) < budget:
                    break
        except zlib.error as exc:
            raise SpdyProtocolError(f"header block does not inflate: {exc}") from exc
        if self._inflate.eof:
            raise SpdyProtocolError("header compression stream ended")
        return b"".join(out)


_TYPE_NAMES: Final = {
    SYN_STREAM: "SYN_STREAM",
    SYN_REPLY: "SYN_REPLY",
    RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS",
    PING: "PING",
    GOAWAY: "GOAWAY",
    HEADERS: "HEADERS",
    WINDOW_UPDATE: "WINDOW_UPDATE",
}
_CONTROL_TYPES: Final = frozenset(_TYPE_NAMES)


def _need(ok: bool, what: str, size: int) -> None:
    if not ok:
        raise SpdyProtocolError(f"{what} frame with a payload of {size} bytes")


class _Signal:
    """Wakes every waiter at once; each re-checks its own condition (a broadcast). Free
    when nobody waits, as on the data path."""

    __slots__ = ("_event", "_waiters")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._waiters = 0

    def fire(self) -> None:
        if self._waiters and self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        self._waiters += 1
        try:
            await event.wait()
        finally:
            self._waiters -= 1


class SpdyStream:
    """One SPDY stream: a bidirectional byte stream with its own headers.

    Errors follow anyio: `receive` raises `anyio.EndOfStream` after the peer's FIN and
    `anyio.BrokenResourceError` once the stream was reset (either way; buffered data is
    dropped) or the connection ended before the peer's FIN (buffered data is still read
    first); `send` raises `anyio.ClosedResourceError` after our own FIN and
    `anyio.BrokenResourceError` after a reset or the connection's end.
    """

    def __init__(
        self, conn: SpdyConnection, stream_id: int, headers: dict[str, str], *, peer_opened: bool
    ) -> None:
        self.id: Final = stream_id
        self._headers = headers
        self._reply_headers: dict[str, str] = {}
        self._conn = conn
        self._peer_opened = peer_opened
        self._replied = False
        self._remote_closed = False
        self._local_closed = False
        self._broken = False
        self._reset_status: int | None = None
        self._buffer: deque[bytes] = deque()
        self._offset = 0
        self._buffered = 0
        self._send_window = conn._peer_initial_window
        self._unacked = 0
        self._readable = _Signal()
        self._reply_signal = _Signal()
        self._send_lock = anyio.Lock(fast_acquire=True)

    @property
    def headers(self) -> Mapping[str, str]:
        """The SYN_STREAM headers (and any from later HEADERS frames of the opener)."""
        return self._headers

    @property
    def reply_headers(self) -> Mapping[str, str]:
        """For a stream we opened: the SYN_REPLY headers (and any later HEADERS frames)."""
        return self._reply_headers

    @property
    def remote_closed(self) -> bool:
        """The peer sent FIN: after the buffered data, `receive` raises EndOfStream."""
        return self._remote_closed

    @property
    def local_closed(self) -> bool:
        """We sent FIN: `send` raises ClosedResourceError."""
        return self._local_closed

    @property
    def reset_status(self) -> int | None:
        """The RST_STREAM status if the stream was reset by either side, else None."""
        return self._reset_status

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {dict(self._headers)!r}>"

    async def reply(self, headers: Mapping[str, str] | None = None, *, fin: bool = False) -> None:
        """Accepts a stream the peer opened (SYN_REPLY); a second call does nothing."""
        if not self._peer_opened:
            raise RuntimeError(f"stream {self.id} was opened here: only the peer replies")
        async with self._send_lock:
            await self._reply(headers or {}, fin=fin)

    async def _reply(self, headers: Mapping[str, str], *, fin: bool) -> None:
        if self._replied:
            return
        self._check_usable()

        def build() -> list[bytes | memoryview]:
            self._check_usable()
            frame = SynReply(self.id, headers, FLAG_FIN if fin else 0)
            encoded = self._conn._encoder.encode(frame)
            self._replied = True
            self._local_closed = self._local_closed or fin
            return [encoded]

        await self._conn._write(build)
        if fin:
            self._conn._retire_if_done(self)

    async def send(self, data: bytes | memoryview) -> None:
        """Writes `data` as DATA frames of at most MAX_DATA_FRAME bytes, waiting for the
        transport and, with a peer that keeps flow control, for its windows.

        `data` is not copied when it is immutable (bytes); a writable buffer is copied once,
        since the transport may hold on to what it was given. A send cancelled while the
        transport was taking a frame closes the connection (the frame may be half written).
        """
        view = memoryview(data).cast("B")
        if not view.readonly:
            view = memoryview(bytes(view))
        async with self._send_lock:
            self._check_usable()
            if self._peer_opened and not self._replied:
                await self._reply({}, fin=False)
            total, offset = len(view), 0
            while offset < total:
                size = await self._conn._reserve_window(self, total - offset)
                await self._conn._write_data(self, view[offset : offset + size], fin=False)
                offset += size

    async def send_eof(self) -> None:
        """Half-closes our side (empty DATA with FIN); does nothing if already half-closed."""
        async with self._send_lock:
            if self._local_closed and not self._broken:
                return
            self._check_usable()
            if self._peer_opened and not self._replied:
                await self._reply({}, fin=True)
            else:
                await self._conn._write_data(self, memoryview(b""), fin=True)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next data from the peer, at most `max_bytes`. The window it frees goes back
        to the peer with the next frame written or at the next `receive()`."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        # WINDOW_UPDATEs owed for earlier reads go out here, before any data is taken:
        # once taken, no await may come (a cancellation would lose the data).
        await self._conn._flush_pending(checkpoint=True)
        while not self._buffer:
            if self._reset_status is not None:
                raise anyio.BrokenResourceError(f"stream {self.id} reset")
            if self._remote_closed:
                raise anyio.EndOfStream
            if self._broken:
                raise anyio.BrokenResourceError(f"stream {self.id}: connection lost")
            await self._readable.wait()
        chunk, offset = self._buffer[0], self._offset
        size = min(len(chunk) - offset, max_bytes)
        if offset == 0 and size == len(chunk):
            out = chunk
        else:
            with memoryview(chunk) as view, view[offset : offset + size] as part:
                out = bytes(part)
        if offset + size == len(chunk):
            self._buffer.popleft()
            self._offset = 0
        else:
            self._offset += size
        self._buffered -= size
        self._conn._consumed(self, size)
        return out

    async def reset(self, status: int = CANCEL) -> None:
        """RST_STREAM: ends the stream both ways at once, dropping what is buffered. Does
        nothing if the stream already ended (both FINs, a reset, the connection's end)."""
        if self._broken or (self._local_closed and self._remote_closed):
            return
        self._conn._queue_control(RstStream(self.id, status))
        self._on_reset(status)
        await self._conn._flush_pending(checkpoint=False)

    async def wait_reply(self) -> None:
        """For a stream we opened: waits for the peer's SYN_REPLY. Raises
        anyio.BrokenResourceError if the stream is reset or the connection ends first."""
        while not self._replied:
            if self._broken:
                raise anyio.BrokenResourceError(f"stream {self.id} reset before its reply")
            await self._reply_signal.wait()

    def _check_usable(self) -> None:
        if self._broken:
            raise anyio.BrokenResourceError(f"stream {self.id} reset or connection lost")
        if self._local_closed:
            raise anyio.ClosedResourceError(f"stream {self.id} half-closed by us")

    def _deliver(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        self._readable.fire()

    def _on_remote_fin(self) -> None:
        self._remote_closed = True
        self._readable.fire()
        self._conn._retire_if_done(self)

    def _on_reset(self, status: int) -> None:
        """The stream ended abnormally (RST either way): drop the buffer, wake everyone."""
        self._reset_status = status
        self._conn._discard(self, self._buffered)
        self._buffer.clear()
        self._offset = 0
        self._buffered = 0
        self._end()

    def _end(self) -> None:
        self._broken = True
        self._conn._forget(self)
        self._readable.fire()
        self._reply_signal.fire()


class SpdyConnection:
    """A SPDY/3.1 session over an upgraded connection, either side (`server` picks even or
    odd stream and ping ids).

    Run `run()` in a task group: it reads and dispatches frames until the peer closes, a
    GOAWAY arrives, a protocol error, or cancellation. When it returns every stream has
    ended, `accept()` raises anyio.EndOfStream and the transport is closed.
    """

    def __init__(
        self,
        transport: ByteStream,
        *,
        server: bool,
        initial: bytes = b"",
        max_header_block: int = 256 * 1024,
        max_streams: int = 1000,
    ) -> None:
        self._transport = transport
        self._send_buffer = cast(
            "Callable[[bytes | memoryview], Awaitable[None]]", transport.send
        )  # every anyio byte stream takes any buffer; the annotation says bytes
        self._server = server
        self._initial = initial
        self._max_streams = max_streams
        self._encoder = FrameEncoder()
        self._decoder = FrameDecoder(max_header_block=max_header_block)
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: deque[SpdyStream] = deque()
        self._incoming_signal = _Signal()
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._next_ping = 2 if server else 1
        self._pings: dict[int, anyio.Event] = {}
        # flow control: what we may send (honoured once the peer shows it keeps windows)
        self._peer_flow = False
        self._peer_initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW
        self._window_signal = _Signal()
        # what we received and hold, and the window owed back
        self._buffered = 0
        self._unacked = 0
        self._consumed_signal = _Signal()
        # our windows, advertised with the first frames we write
        self._pending_control = [
            self._encoder.encode(Settings({SETTINGS_INITIAL_WINDOW_SIZE: STREAM_BUFFER})),
            self._encoder.encode(WindowUpdate(0, CONNECTION_BUFFER - DEFAULT_WINDOW)),
        ]
        self._pending_updates: dict[int, int] = {}
        self._started = False
        self._running = False
        self._run_done = anyio.Event()
        self._closing = False  # we sent GOAWAY
        self._done = False  # run() ended: every stream has ended
        self._write_closed = False  # the transport is closed or a write failed
        self.error: SpdyProtocolError | None = None
        """The protocol error the peer made, if that is what ended the connection."""
        self.last_activity = time.monotonic()
        """time.monotonic() of the last frame read or written, PINGs (and the window updates
        that follow reads) not counted: a client's pings must not keep an idle session."""

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("SpdyConnection.run() called twice")
        self._started = self._running = True
        try:
            await self._read_loop()
        except SpdyProtocolError as exc:
            self.error = exc
            log.info("spdy protocol error", error=str(exc), server=self._server)
            await self._goaway_after_error(exc.status)
        except CLIENT_GONE:
            pass  # the peer went away, or aclose() closed the transport under us
        finally:
            self._running = False
            self._finish()
            await self._abort()
            self._run_done.set()

    async def accept(self) -> SpdyStream:
        """The next stream the peer opened, in order; anyio.EndOfStream once the connection
        is done (or closing)."""
        while not self._incoming:
            if self._done or self._closing:
                raise anyio.EndOfStream
            await self._incoming_signal.wait()
        return self._incoming.popleft()

    async def open(self, headers: Mapping[str, str], *, fin: bool = False) -> SpdyStream:
        """Opens a stream (SYN_STREAM) and returns at once; `wait_reply()` waits for the
        peer's SYN_REPLY. Raises anyio.BrokenResourceError once the connection is ending."""
        if bad := (_FORBIDDEN_HEADERS | {"host"}).intersection(n.lower() for n in headers):
            raise ValueError(f"SPDY forbids these headers in SYN_STREAM: {sorted(bad)}")
        opened: list[SpdyStream] = []

        def build() -> list[bytes | memoryview]:
            if self._closing or self._done:
                raise anyio.BrokenResourceError("connection is closing")
            stream_id = self._next_id
            if stream_id > MAX_STREAM_ID:
                raise anyio.BrokenResourceError("stream ids exhausted")
            # ids must reach the wire in order: allocated and encoded under the write lock
            encoded = self._encoder.encode(SynStream(stream_id, headers, FLAG_FIN if fin else 0))
            self._next_id += 2
            stream = SpdyStream(self, stream_id, dict(headers), peer_opened=False)
            stream._local_closed = fin
            self._streams[stream_id] = stream
            opened.append(stream)
            return [encoded]

        await self._write(build)
        return opened[0]

    async def ping(self) -> None:
        """Sends a PING and waits for its echo; anyio.BrokenResourceError if the connection
        ends first."""
        ping_id = self._next_ping
        self._next_ping = ping_id + 2 if ping_id + 2 <= MAX_STREAM_ID else 2 - ping_id % 2
        answered = self._pings[ping_id] = anyio.Event()
        try:
            await self._write(lambda: [self._encoder.encode(Ping(ping_id))], activity=False)
            await answered.wait()
            if ping_id in self._pings:
                raise anyio.BrokenResourceError("connection ended before the PING echo")
        finally:
            self._pings.pop(ping_id, None)

    async def aclose(self) -> None:
        """GOAWAY (OK), then closes the transport once the peer has closed its side (so what
        we wrote reaches it) or after CLOSE_TIMEOUT. New streams are refused from now on."""
        try:
            if not self._closing and not self._done:
                self._closing = True
                self._wake_all()
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    goaway = GoAway(self._last_peer_id, GOAWAY_OK)
                    try:
                        await self._write(lambda: [self._encoder.encode(goaway)])
                    except anyio.BrokenResourceError:
                        pass
                    else:
                        if self._running:
                            await self._run_done.wait()
        finally:
            self._closing = True
            await self._abort()

    # reading

    async def _read_loop(self) -> None:
        decoder = self._decoder
        if self._initial:
            decoder.feed(self._initial)
            self._initial = b""
        while True:
            while True:
                try:
                    frame = decoder.next_frame()
                except SpdyStreamError as exc:
                    self._on_stream_error(exc)
                    continue
                if frame is None:
                    break
                if not await self._dispatch(frame):
                    return
            await self._flush_pending(checkpoint=False)
            try:
                data = await self._transport.receive(READ_SIZE)
            except anyio.EndOfStream:
                if decoder.mid_frame:
                    log.info("spdy peer closed mid-frame", server=self._server)
                return
            decoder.feed(data)

    async def _dispatch(self, frame: Frame) -> bool:
        """Handles one frame; False ends the connection (GOAWAY)."""
        if not isinstance(frame, Ping):
            self.last_activity = time.monotonic()
        match frame:
            case Data():
                await self._on_data(frame)
            case SynStream():
                self._on_syn_stream(frame)
            case SynReply():
                self._on_syn_reply(frame)
            case Headers():
                self._on_headers(frame)
            case RstStream(stream_id, status):
                if stream := self._streams.get(stream_id):
                    stream._on_reset(status)
            case Settings():
                self._on_settings(frame)
            case WindowUpdate():
                self._on_window_update(frame)
            case Ping(ping_id):
                if ping_id % 2 == self._next_ping % 2:
                    if answered := self._pings.pop(ping_id, None):
                        answered.set()
                else:
                    self._queue_control(frame)  # the echo
            case GoAway():
                log.debug("spdy peer sent GOAWAY", status=frame.status, server=self._server)
                return False
        return True

    async def _on_data(self, frame: Data) -> None:
        size = len(frame.data)
        stream = self._streams.get(frame.stream_id)
        if stream is None or self._closing:
            self._discard(None, size)
            if stream is None and not self._closing and not self._known_id(frame.stream_id):
                self._queue_control(RstStream(frame.stream_id, INVALID_STREAM))
            return
        if stream._remote_closed:
            self._discard(None, size)
            self._queue_control(RstStream(stream.id, STREAM_ALREADY_CLOSED))
            stream._on_reset(STREAM_ALREADY_CLOSED)
            return
        while size and not stream._broken and not self._closing and self._full(stream):
            await self._consumed_signal.wait()  # back-pressure: stop reading the transport
        if stream._broken or self._closing:
            self._discard(None, size)
            return
        if size:
            self._buffered += size
            stream._deliver(frame.data)
        if frame.flags & FLAG_FIN:
            stream._on_remote_fin()

    def _full(self, stream: SpdyStream) -> bool:
        return stream._buffered >= STREAM_BUFFER or self._buffered >= CONNECTION_BUFFER

    def _known_id(self, stream_id: int) -> bool:
        """Whether the id was ever opened (frames for a stream that has ended are dropped)."""
        if stream_id % 2 == self._next_id % 2:
            return stream_id < self._next_id
        return stream_id <= self._last_peer_id

    def _on_syn_stream(self, frame: SynStream) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == self._next_id % 2 or stream_id <= self._last_peer_id:
            # our parity, or an id reused or going backwards
            self._queue_control(RstStream(stream_id, PROTOCOL_ERROR))
            if existing := self._streams.get(stream_id):
                existing._on_reset(PROTOCOL_ERROR)
            return
        self._last_peer_id = stream_id
        if self._closing:
            return  # after our GOAWAY new streams are ignored
        if len(self._streams) >= self._max_streams:
            self._queue_control(RstStream(stream_id, REFUSED_STREAM))
            return
        stream = SpdyStream(self, stream_id, dict(frame.headers), peer_opened=True)
        stream._remote_closed = bool(frame.flags & FLAG_FIN)
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream._local_closed = stream._replied = True
        self._streams[stream_id] = stream
        self._retire_if_done(stream)  # unidirectional with FIN: nothing more can come
        self._incoming.append(stream)
        self._incoming_signal.fire()

    def _on_syn_reply(self, frame: SynReply) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # ended meanwhile (spdystream drops these too)
        if stream._peer_opened or stream._replied:
            status = PROTOCOL_ERROR if stream._peer_opened else STREAM_IN_USE
            self._queue_control(RstStream(stream.id, status))
            stream._on_reset(status)
            return
        stream._replied = True
        stream._reply_headers.update(frame.headers)
        stream._reply_signal.fire()
        if frame.flags & FLAG_FIN:
            stream._on_remote_fin()

    def _on_headers(self, frame: Headers) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return
        target = stream._headers if stream._peer_opened else stream._reply_headers
        target.update(frame.headers)
        if frame.flags & FLAG_FIN:
            stream._on_remote_fin()

    def _on_settings(self, frame: Settings) -> None:
        window = frame.values.get(SETTINGS_INITIAL_WINDOW_SIZE)
        if window is None:
            return
        if window > MAX_WINDOW:
            raise SpdyProtocolError(f"SETTINGS INITIAL_WINDOW_SIZE {window}")
        delta = window - self._peer_initial_window
        self._peer_initial_window = window
        for stream in self._streams.values():
            stream._send_window += delta
        self._peer_flow = True
        self._window_signal.fire()

    def _on_window_update(self, frame: WindowUpdate) -> None:
        self._peer_flow = True
        if frame.stream_id == 0:
            self._send_window += frame.delta
            if self._send_window > MAX_WINDOW:
                raise SpdyProtocolError("connection window overflow", GOAWAY_PROTOCOL_ERROR)
        elif stream := self._streams.get(frame.stream_id):
            stream._send_window += frame.delta
            if stream._send_window > MAX_WINDOW:
                self._queue_control(RstStream(stream.id, FLOW_CONTROL_ERROR))
                stream._on_reset(FLOW_CONTROL_ERROR)
        self._window_signal.fire()

    def _on_stream_error(self, exc: SpdyStreamError) -> None:
        log.info("spdy stream error", error=str(exc), stream=exc.stream_id, server=self._server)
        if exc.frame_type == SYN_STREAM and exc.stream_id % 2 != self._next_id % 2:
            self._last_peer_id = max(self._last_peer_id, exc.stream_id)
        self._queue_control(RstStream(exc.stream_id, exc.status))
        if stream := self._streams.get(exc.stream_id):
            stream._on_reset(exc.status)

    # receive windows and buffers

    def _consumed(self, stream: SpdyStream, size: int) -> None:
        """The application took `size` bytes: owe that much window back to the peer."""
        self._buffered -= size
        self._consumed_signal.fire()
        self._owe(size)
        if not stream._remote_closed and not stream._broken:
            stream._unacked += size
            if stream._unacked >= STREAM_BUFFER // 2:
                self._pending_updates[stream.id] = (
                    self._pending_updates.get(stream.id, 0) + stream._unacked
                )
                stream._unacked = 0

    def _discard(self, stream: SpdyStream | None, size: int) -> None:
        """Received bytes that nobody will read: the connection window is still returned."""
        if stream is not None:
            self._buffered -= size
            self._consumed_signal.fire()
        self._owe(size)

    def _owe(self, size: int) -> None:
        self._unacked += size
        if self._unacked >= CONNECTION_BUFFER // 2:
            self._pending_updates[0] = self._pending_updates.get(0, 0) + self._unacked
            self._unacked = 0

    # sending

    async def _reserve_window(self, stream: SpdyStream, wanted: int) -> int:
        """How much of `wanted` may go in the next DATA frame, taken from the windows."""
        while True:
            stream._check_usable()
            if self._done:
                raise anyio.BrokenResourceError("connection ended")
            size = min(wanted, MAX_DATA_FRAME)
            if not self._peer_flow:
                break
            available = min(stream._send_window, self._send_window)
            if available > 0:
                size = min(size, available)
                break
            await self._window_signal.wait()
        stream._send_window -= size
        self._send_window -= size
        return size

    async def _write_data(self, stream: SpdyStream, chunk: memoryview, *, fin: bool) -> None:
        def build() -> list[bytes | memoryview]:
            stream._check_usable()
            if fin:
                stream._local_closed = True
            header = data_frame_header(stream.id, len(chunk), FLAG_FIN if fin else 0)
            return [header, chunk]

        await self._write(build)
        if fin:
            self._retire_if_done(stream)

    def _queue_control(self, frame: RstStream | Ping) -> None:
        """A frame written by whoever writes next (it needs no header compression, so its
        place in the order does not matter)."""
        self._pending_control.append(self._encoder.encode(frame))

    async def _flush_pending(self, *, checkpoint: bool) -> None:
        """Writes queued control frames and window updates if nobody is writing (a writer
        that holds the lock flushes them itself before letting go)."""
        if (
            (self._pending_control or self._pending_updates)
            and not self._write_lock.locked()
            and not self._write_closed
        ):
            with contextlib.suppress(anyio.BrokenResourceError):
                await self._write(list, activity=False)
        elif checkpoint:
            await anyio.lowlevel.checkpoint()

    def _take_pending(self, parts: list[bytes | memoryview]) -> None:
        parts += self._pending_control
        self._pending_control = []
        for stream_id, delta in self._pending_updates.items():
            stream = self._streams.get(stream_id)
            if stream_id == 0 or (stream and not stream._remote_closed):
                parts.append(self._encoder.encode(WindowUpdate(stream_id, delta)))
        self._pending_updates.clear()

    async def _write(
        self, build: Callable[[], list[bytes | memoryview]], *, activity: bool = True
    ) -> None:
        """Writes the frames `build()` returns, whole and in order, then anything queued.
        `build` runs under the lock, so ids and header blocks are made in wire order."""
        async with self._write_lock:
            # a cancellation that is already due fires here, before anything is written
            await anyio.lowlevel.checkpoint_if_cancelled()
            if self._write_closed:
                raise anyio.BrokenResourceError("connection closed")
            parts = build()
            if parts and activity:
                self.last_activity = time.monotonic()
            self._take_pending(parts)
            while parts:
                await self._send_parts(parts)
                parts = []
                self._take_pending(parts)

    async def _send_parts(self, parts: list[bytes | memoryview]) -> None:
        total = sum(len(part) for part in parts)
        try:
            if len(parts) > 1 and total <= 64 * 1024:
                await self._send_buffer(b"".join(parts))
            else:
                for part in parts:
                    await self._send_buffer(part)
        except BaseException as exc:
            # interrupted inside a write: the frame may be half written, the connection is
            # unusable from here on
            await self._abort()
            if isinstance(exc, CLIENT_GONE):
                raise anyio.BrokenResourceError("connection lost while writing") from exc
            raise

    async def _goaway_after_error(self, status: int) -> None:
        with anyio.move_on_after(1):
            goaway = GoAway(self._last_peer_id, status)
            with contextlib.suppress(anyio.BrokenResourceError):
                await self._write(lambda: [self._encoder.encode(goaway)])

    # ending

    def _retire_if_done(self, stream: SpdyStream) -> None:
        if stream._local_closed and stream._remote_closed:
            self._forget(stream)

    def _forget(self, stream: SpdyStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        self._window_signal.fire()
        self._consumed_signal.fire()

    def _wake_all(self) -> None:
        self._incoming_signal.fire()
        self._window_signal.fire()
        self._consumed_signal.fire()

    def _finish(self) -> None:
        """run() is over: every stream ends, every waiter wakes to find out."""
        self._done = True
        self._incoming.clear()
        for stream in list(self._streams.values()):
            stream._end()
        self._streams.clear()
        for answered in self._pings.values():
            answered.set()
        self._wake_all()

    async def _abort(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._transport)
        if not self._started:
            self._finish()
