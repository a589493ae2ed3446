"""WebSocket for the streaming server: the k8s channel protocols and the SPDY tunnel.

The server parses the upgrade request with h11 and hands over the transport; `accept`
answers the handshake through wsproto and returns a `WebSocket`, whose `run` task reads
the transport (answering pings and the close handshake) while its owner exchanges whole
messages. Two framings ride on it:

- `ChannelConnection`, the channel protocols of exec, attach and port-forward
  (k8s.io/streaming `wsstream/conn.go`, client-go `tools/remotecommand/websocket.go`):
  every message starts with its channel, a byte in the binary protocols, an ASCII digit
  followed by the base64 of the payload (in a text message) in the base64 ones. In
  `v5.channel.k8s.io` the client's binary message [255, n] closes channel n (client-go
  sends it for stdin EOF); older versions have no way to close one channel. A client that
  names no subprotocol gets channel.k8s.io framing, as the kubelet gives it.
- `WebSocketByteStream`, the `SPDY/3.1+portforward.k8s.io` tunnel of crictl's and
  kubectl's WebSocket port-forward (client-go `tools/portforward/tunneling_connection.go`):
  binary messages carry the raw bytes of a SPDY connection, their boundaries mean nothing.

Port-forward over the channel protocols (k/k `kubelet/cri/streaming/portforward/websocket.go`)
gives the i-th requested port the data channel 2i and the error channel 2i+1, and the
server's first message on each is the port, 2 bytes little-endian: `announce_ports`.

Bounded: a message past `max_message` ends the connection with 1009; the messages the owner
has not taken yet are held up to `max_buffer` bytes, and past that the reader stops reading
the transport, so a client that floods stdin is slowed down by TCP, not buffered.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn, cast

import anyio
import anyio.abc
import h11
import structlog
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from wsproto.connection import Connection

__all__ = [
    "BASE64_PROTOCOLS",
    "BINARY_PROTOCOLS",
    "CLOSE_SIGNAL",
    "EXEC_PROTOCOLS",
    "PORTFORWARD_PROTOCOLS",
    "SPDY_TUNNEL",
    "UNNAMED",
    "ChannelConnection",
    "HandshakeRefused",
    "WebSocket",
    "WebSocketByteStream",
    "accept",
    "announce_ports",
    "is_websocket_request",
    "port_channels",
    "port_prefix",
]

log = structlog.get_logger("criproxy.streaming.websocket")

UNNAMED = ""  # the client offered no subprotocol
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V1 = "channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"

BINARY_PROTOCOLS = frozenset({V5, V4, V1, UNNAMED})
BASE64_PROTOCOLS = frozenset({V4_BASE64, V1_BASE64})
# In the order of STREAMING.md; the client's order of preference decides among them.
EXEC_PROTOCOLS = (V5, V4, V1, V4_BASE64, V1_BASE64, UNNAMED)
PORTFORWARD_PROTOCOLS = (SPDY_TUNNEL, V4, V4_BASE64, UNNAMED)

CLOSE_SIGNAL = 255  # v5: the client's message [255, n] closes its channel n

MAX_MESSAGE = 1 << 20  # client-go writes at most 32 KiB (+ the channel byte) per message
MAX_BUFFER = 256 * 1024
CLOSE_TIMEOUT = 5.0
_READ_SIZE = 65536
_MESSAGE_COST = 64  # what a queued message costs beyond its payload, so empty ones count
_TRANSPORT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class HandshakeRefused(Exception):
    """The upgrade was refused: the error response was written and the transport closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def is_websocket_request(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """`Upgrade: websocket` with `Connection: upgrade`; other upgrades (SPDY/3.1) are not."""
    upgrade = connection = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"upgrade":
            upgrade = upgrade or value.strip().lower() == b"websocket"
        elif name == b"connection":
            connection = connection or any(
                token.strip().lower() == b"upgrade" for token in value.split(b",")
            )
    return upgrade and connection


async def accept(
    transport: anyio.abc.ByteStream,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    protocols: Sequence[str] = EXEC_PROTOCOLS,
    target: bytes | str = b"/",
    initial: bytes = b"",
    max_message: int = MAX_MESSAGE,
    max_buffer: int = MAX_BUFFER,
    close_timeout: float = CLOSE_TIMEOUT,
) -> WebSocket:
    """Answer a WebSocket upgrade whose request h11 has parsed (`headers` as h11 gives them).

    The subprotocol is the client's first offer that is in `protocols`; `UNNAMED` in
    `protocols` admits a client that offers none. On success the 101 response is written
    and the returned `WebSocket` owns the transport (`initial`: bytes read past the
    request, the client's first frames). Otherwise a 400 (or wsproto's 426 for a wrong
    version) is written, the transport closed and `HandshakeRefused` raised.
    """
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(headers), target)
    except (ProtocolError, h11.ProtocolError) as exc:
        hint = exc.event_hint if isinstance(exc, RemoteProtocolError) else None
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        extra = list(hint.headers) if isinstance(hint, RejectConnection) else []
        await _refuse(transport, handshake, status, str(exc), extra)
    request = next(e for e in handshake.events() if isinstance(e, Request))
    chosen = _choose(request.subprotocols, protocols)
    if chosen is None:
        named = [p for p in protocols if p != UNNAMED]
        reason = (
            f"requested protocol(s) are not supported: {request.subprotocols}; supports {named}"
        )
        await _refuse(transport, handshake, 400, reason, [])
    try:
        await transport.send(handshake.send(AcceptConnection(subprotocol=chosen or None)))
    except BaseException:
        await _close_transport(transport, close_timeout)
        raise
    connection = handshake.connection
    assert connection is not None  # accepting made it
    return WebSocket(
        transport,
        connection,
        chosen,
        initial=initial,
        max_message=max_message,
        max_buffer=max_buffer,
        close_timeout=close_timeout,
    )


def _choose(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    if not offered:
        return UNNAMED if UNNAMED in supported else None
    return next((p for p in offered if p and p in supported), None)


async def _refuse(
    transport: anyio.abc.ByteStream,
    handshake: H11Handshake,
    status: int,
    reason: str,
    headers: list[tuple[bytes, bytes]],
) -> NoReturn:
    log.info("websocket upgrade refused", status=status, reason=reason)
    body = reason.encode() + b"\n"
    headers += [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    response = handshake.send(RejectConnection(status_code=status, headers=headers, has_body=True))
    response += handshake.send(RejectData(data=body, body_finished=True))
    try:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await transport.send(response)
    except _TRANSPORT_GONE:
        pass
    finally:
        await _close_transport(transport, CLOSE_TIMEOUT)
    raise HandshakeRefused(status, reason)


async def _close_transport(transport: anyio.abc.ByteStream, timeout: float) -> None:
    """Close it without hanging on a peer that never answers a TLS close_notify."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(timeout) as scope:
            try:
                await transport.aclose()
            except (*_TRANSPORT_GONE, OSError):
                pass
        if scope.cancelled_caught:
            await anyio.aclose_forcefully(transport)


class _Inbox:
    """Whole messages between the reader and the owner, bounded in bytes: while it is full,
    the reader waits, and so stops reading the transport."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[bytes, bool]] = deque()
        self._size = 0
        self._limit = limit
        self._changed = anyio.Event()
        self._end: Callable[[], Exception] | None = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def put(self, data: bytes, text: bool) -> None:
        while self._size >= self._limit and self._end is None:
            await self._changed.wait()
        if self._end is None:  # after the end nobody takes it
            self._items.append((data, text))
            self._size += len(data) + _MESSAGE_COST
            self._notify()

    async def get(self) -> tuple[bytes, bool]:
        while not self._items:
            if self._end is not None:
                raise self._end()
            await self._changed.wait()
        data, text = self._items.popleft()
        self._size -= len(data) + _MESSAGE_COST
        self._notify()
        return data, text

    def end(self, error: Callable[[], Exception]) -> None:
        """What the owner gets once the queued messages are taken; the first end stands."""
        if self._end is None:
            self._end = error
        self._notify()


class WebSocket:
    """The server side of one WebSocket after the handshake: whole messages, both ways.

    `run` must be running (in the owner's task group) for messages to arrive and for the
    peer's pings and close to be answered; it returns when the connection is over, with
    the transport closed. `last_activity` (monotonic) moves with data messages only: a
    client's pings keep no session alive past the idle timeout (containerd#5563).
    """

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        connection: Connection,
        protocol: str,
        *,
        initial: bytes = b"",
        max_message: int = MAX_MESSAGE,
        max_buffer: int = MAX_BUFFER,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.protocol = protocol
        self.last_activity = time.monotonic()
        self.close_code: int | None = None  # sent or received; 1006 when the transport died
        self._transport = transport
        self._conn = connection
        self._initial = initial
        self._max_message = max_message
        self._close_timeout = close_timeout
        self._inbox = _Inbox(max_buffer)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._done = anyio.Event()
        self._running = False
        self._closing = False  # close() was called
        self._parts: list[bytes] = []
        self._parts_size = 0

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._transport.extra_attributes

    async def run(self) -> None:
        """Read frames until the close handshake, a protocol error or the transport's end."""
        if self._running:
            raise RuntimeError("WebSocket.run is already running")
        self._running = True
        ended: Callable[[], Exception] = anyio.BrokenResourceError
        try:
            data, self._initial = self._initial, b""
            while True:
                if data:
                    self._conn.receive_data(data)
                    outcome = await self._dispatch()
                    if outcome is not None:
                        ended = outcome
                        break
                try:
                    data = await self._transport.receive(_READ_SIZE)
                except _TRANSPORT_GONE:
                    self._conn.receive_data(None)  # wsproto: CLOSED, so sends fail
                    if self._closing:
                        ended = anyio.EndOfStream
                    elif self.close_code is None:
                        self.close_code = CloseReason.ABNORMAL_CLOSURE
                    break
        finally:
            self._inbox.end(ended)
            await _close_transport(self._transport, self._close_timeout)
            self._done.set()

    async def _dispatch(self) -> Callable[[], Exception] | None:
        """Handle the events of what was read; how the connection ended, once it has."""
        for event in self._conn.events():
            if isinstance(event, BytesMessage | TextMessage):
                if self._closing:
                    continue  # after our Close the peer may still send; nobody wants it
                part = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
                self._parts.append(part)
                self._parts_size += len(part)
                if self._parts_size > self._max_message:
                    await self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
                    return anyio.BrokenResourceError
                if event.message_finished:
                    message = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                    self._parts, self._parts_size = [], 0
                    self.last_activity = time.monotonic()
                    await self._inbox.put(message, isinstance(event, TextMessage))
            elif isinstance(event, Ping):
                if self._conn.state is ConnectionState.OPEN:
                    await self._send_control(event.response())
            elif isinstance(event, CloseConnection):
                if self._conn.state is ConnectionState.REMOTE_CLOSING:  # the peer's Close
                    self.close_code = event.code
                    await self._send_control(event.response())
                    return anyio.EndOfStream
                if self._conn.state is ConnectionState.CLOSED:  # the answer to ours
                    return anyio.EndOfStream
                await self._fail(event.code, event.reason or "")  # wsproto's parse error
                return anyio.BrokenResourceError
        return None

    async def _fail(self, code: int, reason: str) -> None:
        """Close on bad input: the Close frame, then whatever the peer still sends is
        read and dropped (bounded) so that closing the socket does not reset it before
        the peer has read our Close."""
        log.info("websocket closed on bad input", code=code, reason=reason)
        self.close_code = code
        if self._conn.state is ConnectionState.OPEN:
            await self._send_control(CloseConnection(code=code, reason=reason))
        with anyio.move_on_after(self._close_timeout):
            try:
                while await self._transport.receive(_READ_SIZE):
                    pass
            except _TRANSPORT_GONE:
                pass

    async def _send_control(self, event: Event) -> None:
        """A Pong or Close from the reader; a transport that failed shows on the next read."""
        try:
            with anyio.move_on_after(self._close_timeout):
                async with self._send_lock:
                    await self._transport.send(self._conn.send(event))
        except _TRANSPORT_GONE:
            pass

    async def receive(self) -> tuple[bytes, bool]:
        """The next whole data message from the peer and whether it came as text. Raises
        `anyio.EndOfStream` after a close handshake, `anyio.BrokenResourceError` when the
        connection failed (transport lost, bad input)."""
        return await self._inbox.get()

    async def send(self, data: bytes | bytearray | memoryview | str) -> None:
        """One message: text for str, binary otherwise. Waits for the transport."""
        # wsproto copies any buffer into its frame, so a memoryview goes in as it is
        event: Event = (
            TextMessage(data=data) if isinstance(data, str) else BytesMessage(cast("bytes", data))
        )
        gone = anyio.ClosedResourceError if self._closing else anyio.BrokenResourceError
        async with self._send_lock:
            if self._conn.state is not ConnectionState.OPEN:
                raise gone
            try:
                await self._transport.send(self._conn.send(event))
            except anyio.ClosedResourceError:  # the reader closed it: the peer went away
                raise gone from None
        self.last_activity = time.monotonic()

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """The close handshake (waiting at most `close_timeout` for the peer's answer), then
        the transport closed; messages already received can still be taken."""
        self._closing = True
        self._inbox.end(anyio.EndOfStream)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
            if self._conn.state is ConnectionState.OPEN:
                self.close_code = code
                try:
                    async with self._send_lock:
                        if self._conn.state is ConnectionState.OPEN:
                            await self._transport.send(
                                self._conn.send(CloseConnection(code=code, reason=reason))
                            )
                except _TRANSPORT_GONE:
                    pass
            if self._running:
                await self._done.wait()
        await _close_transport(self._transport, self._close_timeout)
        if self._running:
            await self._done.wait()  # the reader sees the closed transport at once


class ChannelConnection:
    """The k8s channel protocols over one WebSocket: (channel, payload) both ways.

    Channels of exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (a JSON
    {"Width":..,"Height":..} per message); of port-forward: see `port_channels`.
    """

    def __init__(self, ws: WebSocket) -> None:
        if ws.protocol not in BINARY_PROTOCOLS | BASE64_PROTOCOLS:
            raise ValueError(f"{ws.protocol!r} is not a channel protocol")
        self.ws = ws
        self._base64 = ws.protocol in BASE64_PROTOCOLS
        self._close_signal = ws.protocol == V5

    @property
    def protocol(self) -> str:
        return self.ws.protocol

    @property
    def last_activity(self) -> float:
        return self.ws.last_activity

    async def run(self) -> None:
        """The reader (`WebSocket.run`): run it beside the session."""
        await self.ws.run()

    async def receive(self) -> tuple[int, bytes | None]:
        """The client's next (channel, payload); payload None: the client closed that
        channel (v5's close signal). Messages without a channel byte are dropped. Raises
        as `WebSocket.receive`."""
        while True:
            data, _text = await self.ws.receive()
            if not data:
                continue
            if self._close_signal and data[0] == CLOSE_SIGNAL:
                if len(data) != 2:
                    await self.ws.close(CloseReason.PROTOCOL_ERROR, "bad close signal")
                    raise anyio.BrokenResourceError
                return data[1], None
            if not self._base64:
                return data[0], data[1:]
            try:
                payload = binascii.a2b_base64(data[1:])
            except binascii.Error:
                await self.ws.close(CloseReason.INVALID_FRAME_PAYLOAD_DATA, "invalid base64")
                raise anyio.BrokenResourceError from None
            return (data[0] - ord("0")) & 0xFF, payload

    async def send(self, channel: int, data: bytes | bytearray | memoryview) -> None:
        """One message on `channel`; an empty one too (the kubelet's "connected" notice)."""
        if not 0 <= channel <= 255:
            raise ValueError(f"channel {channel} is not a byte")
        if self._base64:
            await self.ws.send(chr(ord("0") + channel) + base64.b64encode(data).decode("ascii"))
        else:
            await self.ws.send(b"".join((bytes((channel,)), data)))

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        await self.ws.close(code, reason)


def port_channels(index: int) -> tuple[int, int]:
    """The (data, error) channels of the index-th port of a port-forward request."""
    return 2 * index, 2 * index + 1


def port_prefix(port: int) -> bytes:
    """The first message of each of a port's channels: the port, 2 bytes little-endian."""
    return port.to_bytes(2, "little")


async def announce_ports(conn: ChannelConnection, ports: Sequence[int]) -> None:
    """Start port-forward over the channel protocols: each channel's port prefix."""
    if 2 * len(ports) > 256:
        raise ValueError(f"{len(ports)} ports do not fit in 256 channels")
    for index, port in enumerate(ports):
        prefix = port_prefix(port)
        for channel in port_channels(index):
            await conn.send(channel, prefix)


class WebSocketByteStream(anyio.abc.ByteStream):
    """The bytes of a WebSocket's binary messages as one stream, for the SPDY tunnel
    (`SPDY/3.1+portforward.k8s.io`): a `SpdyConnection` runs over it unchanged while the
    WebSocket's `run` runs beside it. A text message is a protocol error (1003)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._pending = b""
        self._offset = 0

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.ws.extra_attributes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while self._offset >= len(self._pending):
            data, text = await self.ws.receive()
            if text:
                await self.ws.close(CloseReason.UNSUPPORTED_DATA, "the tunnel is binary")
                raise anyio.BrokenResourceError
            self._pending, self._offset = data, 0
        start = self._offset
        self._offset = min(start + max_bytes, len(self._pending))
        if start == 0 and self._offset == len(self._pending):
            return self._pending
        return self._pending[start : self._offset]

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        await self.ws.send(item)

    async def send_eof(self) -> None:
        """WebSocket has no half-close: this is the close handshake."""
        await self.ws.close()

    async def aclose(self) -> None:
        await self.ws.close()
