"""The WebSocket side of the streaming server, driven by a client written here against the
protocol (wsproto's client side) over a socketpair, the server side handed the request as
the HTTP server does: parsed by h11, with whatever h11 read past it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import h11
import pytest
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from criproxy.streaming.websocket import (
    EXEC_PROTOCOLS,
    PORTFORWARD_PROTOCOLS,
    SPDY_TUNNEL,
    UNNAMED,
    ChannelConnection,
    HandshakeRefused,
    WebSocket,
    WebSocketByteStream,
    accept,
    announce_ports,
    is_websocket_request,
    port_channels,
    port_prefix,
)

pytestmark = pytest.mark.anyio

V5, V4, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"
V4_BASE64, V1_BASE64 = "v4.base64.channel.k8s.io", "base64.channel.k8s.io"
RESIZE = 4
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample nonce


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the client and the server's side of the upgrade ---------------------------------------


class Client:
    """A WebSocket client over one end of the socketpair."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()

    async def request(self, protocols: Sequence[str], *, then: bytes = b"") -> None:
        upgrade = Request(host="127.0.0.1", target="/exec/token", subprotocols=list(protocols))
        await self.stream.send(self.ws.send(upgrade) + then)

    async def send(self, event: Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self.events:
            try:
                data: bytes | None = await self.stream.receive()
            except anyio.EndOfStream:
                data = None
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    async def message(self) -> bytes | str:
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    async def closed_with(self) -> int:
        """The server's Close code; the client answers it if the server still listens."""
        event = await self.next_event()
        assert isinstance(event, CloseConnection), event
        with contextlib.suppress(anyio.BrokenResourceError):
            await self.send(event.response())
        return event.code

    async def at_eof(self) -> bool:
        try:
            await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
        return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]]:
    left, right = socket.socketpair()
    server = await anyio.abc.UNIXSocketStream.from_socket(left)
    client = await anyio.abc.UNIXSocketStream.from_socket(right)
    try:
        yield server, client
    finally:
        await server.aclose()
        await client.aclose()


async def read_request(stream: anyio.abc.ByteStream) -> tuple[h11.Request, bytes]:
    """What the HTTP server does before it hands over: the request, and the bytes past it."""
    http = h11.Connection(h11.SERVER)
    request = None
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await stream.receive())
        elif isinstance(event, h11.Request):
            request = event
        elif event is h11.PAUSED:
            assert request is not None
            return request, http.trailing_data[0]


async def upgrade(
    server: anyio.abc.ByteStream, protocols: Sequence[str], **limits: Any
) -> WebSocket:
    request, leftover = await read_request(server)
    return await accept(
        server,
        request.headers,
        protocols=protocols,
        target=request.target,
        initial=leftover,
        **limits,
    )


@asynccontextmanager
async def session(
    offered: Sequence[str] = (V5,),
    protocols: Sequence[str] = EXEC_PROTOCOLS,
    *,
    then: bytes = b"",
    **limits: Any,
) -> AsyncIterator[tuple[WebSocket, Client]]:
    """An accepted connection with its reader running; at the end, no fd is left."""
    limits.setdefault("close_timeout", 0.1)
    fds = open_fds()
    with anyio.fail_after(10):
        async with socket_pair() as (server, client_stream):
            client = Client(client_stream)
            await client.request(offered, then=then)
            ws = await upgrade(server, protocols, **limits)
            assert isinstance(await client.next_event(), AcceptConnection)
            async with anyio.create_task_group() as tg:
                tg.start_soon(ws.run)
                yield ws, client
                await ws.close()
    assert open_fds() == fds


# --- the handshake --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "protocols"),
    [
        *((p, EXEC_PROTOCOLS) for p in EXEC_PROTOCOLS if p),
        *((p, PORTFORWARD_PROTOCOLS) for p in PORTFORWARD_PROTOCOLS if p),
    ],
)
async def test_each_subprotocol_is_accepted(protocol: str, protocols: Sequence[str]) -> None:
    async with socket_pair() as (server, client_stream):
        client = Client(client_stream)
        await client.request([protocol])
        ws = await upgrade(server, protocols)
        accepted = await client.next_event()
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol == protocol == ws.protocol


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [([V5, V4], V5), ([V4, V5], V4), (["v9.channel.k8s.io", V4_BASE64], V4_BASE64)],
)
async def test_the_clients_first_supported_offer_wins(offered: list[str], chosen: str) -> None:
    async with session(offered) as (ws, _client):
        assert ws.protocol == chosen


async def test_a_client_naming_no_subprotocol_gets_binary_channels() -> None:
    async with socket_pair() as (server, client_stream):
        client = Client(client_stream)
        await client.request([])
        ws = await upgrade(server, EXEC_PROTOCOLS)
        accepted = await client.next_event()
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol is None
        assert ws.protocol == UNNAMED
        assert not ChannelConnection(ws)._base64


async def refused(
    offered: Sequence[str], protocols: Sequence[str]
) -> tuple[HandshakeRefused, RejectConnection, bytes]:
    async with socket_pair() as (server, client_stream):
        client = Client(client_stream)
        await client.request(offered)
        with pytest.raises(HandshakeRefused) as caught:
            await upgrade(server, protocols)
        rejection = await client.next_event()
        assert isinstance(rejection, RejectConnection)
        body = b""
        while True:
            data = await client.next_event()
            assert isinstance(data, RejectData)
            body += data.data
            if data.body_finished:
                break
        assert await client.at_eof()  # the transport was closed
        return caught.value, rejection, body


async def test_an_unknown_subprotocol_is_refused_with_400_listing_the_supported() -> None:
    error, rejection, body = await refused(["v9.channel.k8s.io"], EXEC_PROTOCOLS)
    assert error.status == rejection.status_code == 400
    text = body.decode()
    assert "v9.channel.k8s.io" in text
    assert all(p in text for p in EXEC_PROTOCOLS if p)


async def test_the_tunnel_is_refused_on_exec() -> None:
    error, _rejection, _body = await refused([SPDY_TUNNEL], EXEC_PROTOCOLS)
    assert error.status == 400


async def test_naming_none_is_refused_where_unnamed_is_not_supported() -> None:
    error, _rejection, _body = await refused([], [V5, V4])
    assert error.status == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"sec-websocket-version", b"13")], 400),  # no Sec-WebSocket-Key
        ([(b"sec-websocket-key", KEY), (b"sec-websocket-version", b"8")], 426),
    ],
)
async def test_a_bad_upgrade_request_is_refused(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    base = [(b"host", b"127.0.0.1"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    async with socket_pair() as (server, client_stream):
        with pytest.raises(HandshakeRefused) as caught:
            await accept(server, base + headers)
        assert caught.value.status == status
        response = await client_stream.receive()
        assert response.startswith(b"HTTP/1.1 %d" % status)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], True),
        ([(b"Upgrade", b"WebSocket"), (b"Connection", b"keep-alive, Upgrade")], True),
        ([(b"upgrade", b"SPDY/3.1"), (b"connection", b"Upgrade")], False),
        ([(b"upgrade", b"websocket")], False),
    ],
)
def test_is_websocket_request(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_websocket_request(headers) is expected


async def test_frames_sent_with_the_request_are_read_first() -> None:
    framer = Connection(ConnectionType.CLIENT)
    first = framer.send(BytesMessage(data=b"\x00early"))
    async with session([V4], then=first) as (ws, _client):
        assert await ChannelConnection(ws).receive() == (0, b"early")


# --- channel framing ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V5, V4, V1, UNNAMED])
async def test_binary_channel_framing_both_ways(protocol: str) -> None:
    async with session([protocol] if protocol else []) as (ws, client):
        conn = ChannelConnection(ws)
        await client.send(BytesMessage(data=b"\x00hello"))
        await client.send(BytesMessage(data=b""))  # no channel byte: dropped
        await client.send(TextMessage(data="\x00as text"))  # the kubelet takes both kinds
        assert await conn.receive() == (0, b"hello")
        assert await conn.receive() == (0, b"as text")
        await conn.send(1, b"out")
        await conn.send(2, memoryview(b"err"))
        await conn.send(1, b"")
        assert [await client.message() for _ in range(3)] == [b"\x01out", b"\x02err", b"\x01"]


@pytest.mark.parametrize("protocol", [V4_BASE64, V1_BASE64])
async def test_base64_channel_framing_both_ways(protocol: str) -> None:
    async with session([protocol]) as (ws, client):
        conn = ChannelConnection(ws)
        await client.send(TextMessage(data="0" + base64.b64encode(b"hi\n").decode()))
        await client.send(BytesMessage(data=b"0" + base64.b64encode(b"\x00\xff")))
        assert await conn.receive() == (0, b"hi\n")
        assert await conn.receive() == (0, b"\x00\xff")
        await conn.send(1, b"\x00\xffout")
        await conn.send(3, b"")
        assert await client.message() == "1" + base64.b64encode(b"\x00\xffout").decode()
        assert await client.message() == "3"


async def test_v5_close_signal_closes_one_channel() -> None:
    async with session([V5]) as (ws, client):
        conn = ChannelConnection(ws)
        await client.send(BytesMessage(data=b"\x00last"))
        await client.send(BytesMessage(data=b"\xff\x00"))
        await client.send(BytesMessage(data=b"\x04{}"))
        assert await conn.receive() == (0, b"last")
        assert await conn.receive() == (0, None)
        assert await conn.receive() == (RESIZE, b"{}")


async def test_before_v5_channel_255_is_data() -> None:
    async with session([V4]) as (ws, client):
        await client.send(BytesMessage(data=b"\xff\x00"))
        assert await ChannelConnection(ws).receive() == (255, b"\x00")


@pytest.mark.parametrize("signal", [b"\xff", b"\xff\x00\x01"])
async def test_a_malformed_close_signal_ends_the_connection(signal: bytes) -> None:
    async with session([V5]) as (ws, client):
        await client.send(BytesMessage(data=signal))
        with pytest.raises(anyio.BrokenResourceError):
            await ChannelConnection(ws).receive()
        assert await client.closed_with() == 1002


@pytest.mark.parametrize("protocol", [V5, V4_BASE64])
async def test_resize_json_passes_through(protocol: str) -> None:
    size = json.dumps({"Width": 132, "Height": 43}).encode()
    async with session([protocol]) as (ws, client):
        if protocol == V5:
            await client.send(BytesMessage(data=b"\x04" + size))
        else:
            await client.send(TextMessage(data="4" + base64.b64encode(size).decode()))
        channel, payload = await ChannelConnection(ws).receive()
        assert channel == RESIZE
        assert payload is not None
        assert json.loads(payload) == {"Width": 132, "Height": 43}


async def test_invalid_base64_ends_the_connection_with_1007() -> None:
    async with session([V4_BASE64]) as (ws, client):
        await client.send(TextMessage(data="0abc"))  # bad padding
        with pytest.raises(anyio.BrokenResourceError):
            await ChannelConnection(ws).receive()
        assert await client.closed_with() == 1007


# --- messages, control frames, limits -------------------------------------------------------


async def test_fragmented_messages_are_reassembled_around_a_ping() -> None:
    async with session([V5]) as (ws, client):
        await client.send(BytesMessage(data=b"\x00ab", message_finished=False))
        await client.send(Ping(payload=b"p"))
        await client.send(BytesMessage(data=b"cd", message_finished=False))
        await client.send(BytesMessage(data=b"ef", message_finished=True))
        pong = await client.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"p"
        assert await ChannelConnection(ws).receive() == (0, b"abcdef")


async def test_fragmented_base64_text_is_reassembled() -> None:
    async with session([V4_BASE64]) as (ws, client):
        await client.send(TextMessage(data="0Zm", message_finished=False))
        await client.send(TextMessage(data="9v", message_finished=True))
        assert await ChannelConnection(ws).receive() == (0, b"foo")


async def test_pings_are_answered_and_are_no_activity() -> None:
    async with session([V5]) as (ws, client):
        conn = ChannelConnection(ws)
        before = conn.last_activity
        await anyio.sleep(0.02)
        for n in range(3):
            await client.send(Ping(payload=b"%d" % n))
            pong = await client.next_event()
            assert isinstance(pong, Pong)
            assert pong.payload == b"%d" % n
        assert conn.last_activity == before
        await client.send(BytesMessage(data=b"\x00x"))
        await conn.receive()
        received = conn.last_activity
        assert received > before
        await anyio.sleep(0.02)
        await conn.send(1, b"y")
        assert conn.last_activity > received


@pytest.mark.parametrize("pieces", [[2000], [600, 600]])
async def test_an_oversized_message_ends_the_connection_with_1009(pieces: list[int]) -> None:
    async with session([V5], max_message=1024) as (ws, client):
        for index, size in enumerate(pieces):
            last = index == len(pieces) - 1
            await client.send(BytesMessage(data=b"\x00" * size, message_finished=last))
        with pytest.raises(anyio.BrokenResourceError):
            await ws.receive()
        assert await client.closed_with() == 1009
        assert ws.close_code == 1009
        with pytest.raises(anyio.BrokenResourceError):
            await ws.send(b"\x01late")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x82\x01\x00", 1002),  # an unmasked client frame
        (b"\x80\x80\x00\x00\x00\x00", 1002),  # a continuation with nothing to continue
    ],
)
async def test_a_protocol_violation_ends_the_connection(raw: bytes, code: int) -> None:
    async with session([V5]) as (ws, client):
        await client.stream.send(raw)
        with pytest.raises(anyio.BrokenResourceError):
            await ws.receive()
        assert await client.closed_with() == code


async def test_invalid_utf8_text_ends_the_connection_with_1007() -> None:
    framer = Connection(ConnectionType.CLIENT)
    async with session([V4_BASE64]) as (ws, client):
        # a text frame whose payload is not UTF-8, built as a binary one and relabelled
        frame = bytearray(framer.send(BytesMessage(data=b"0\xff\xfe")))
        frame[0] = 0x81
        await client.stream.send(bytes(frame))
        with pytest.raises(anyio.BrokenResourceError):
            await ws.receive()
        assert await client.closed_with() == 1007


async def test_a_slow_consumer_stops_the_reader() -> None:
    size, count = 64 * 1024, 128  # 8 MiB: far beyond the socket buffers and max_buffer
    sent = 0
    async with session([V5], max_buffer=size) as (ws, client):

        async def flood() -> None:
            nonlocal sent
            for n in range(count):
                await client.send(BytesMessage(data=bytes([0, n]) + b"x" * (size - 2)))
                sent += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await anyio.sleep(0.5)
            assert sent < count // 4  # the client is held back, not buffered for
            conn = ChannelConnection(ws)
            for n in range(count):
                channel, data = await conn.receive()
                assert (channel, data[:1] if data else data) == (0, bytes([n]))
        assert sent == count


async def test_concurrent_senders_each_get_whole_messages() -> None:
    async with session([V5]) as (ws, client):
        conn = ChannelConnection(ws)

        async def write(channel: int) -> None:
            for n in range(50):
                await conn.send(channel, b"%d:" % n + b"y" * 5000)

        got: dict[int, list[int]] = {1: [], 2: [], 3: []}
        async with anyio.create_task_group() as tg:
            for channel in got:
                tg.start_soon(write, channel)
            for _ in range(150):
                message = await client.message()
                assert isinstance(message, bytes)
                got[message[0]].append(int(message[1:].split(b":")[0]))
        assert all(seen == list(range(50)) for seen in got.values())


# --- closing --------------------------------------------------------------------------------


async def test_the_clients_close_ends_receiving_after_queued_messages() -> None:
    async with session([V5]) as (ws, client):
        conn = ChannelConnection(ws)
        await client.send(BytesMessage(data=b"\x00bye"))
        await client.send(CloseConnection(code=1000))
        answer = await client.next_event()
        assert isinstance(answer, CloseConnection)
        assert answer.code == 1000
        assert await conn.receive() == (0, b"bye")
        with pytest.raises(anyio.EndOfStream):
            await conn.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await conn.send(1, b"late")
        assert ws.close_code == 1000
        assert await client.at_eof()


async def test_the_servers_close_waits_for_the_clients_answer() -> None:
    async with session([V5], close_timeout=5) as (ws, client):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.closed_with)
            started = time.monotonic()
            await ChannelConnection(ws).close()
            assert time.monotonic() - started < 1
        assert await client.at_eof()
        with pytest.raises(anyio.ClosedResourceError):
            await ws.send(b"\x01late")


async def test_the_servers_close_gives_up_on_a_silent_client() -> None:
    async with session([V5], close_timeout=0.2) as (ws, client):
        started = time.monotonic()
        await ws.close(1001, "going away")
        assert 0.15 < time.monotonic() - started < 2
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1001
        assert await client.at_eof()


async def test_an_abrupt_disconnect_mid_frame_breaks_the_connection() -> None:
    async with session([V5]) as (ws, client):
        frame = Connection(ConnectionType.CLIENT).send(BytesMessage(data=b"\x00" + b"z" * 500))
        await client.stream.send(frame[:100])
        await client.stream.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await ws.receive()
        assert ws.close_code == 1006
        with pytest.raises(anyio.BrokenResourceError):
            await ChannelConnection(ws).send(1, b"late")


# --- port-forward ---------------------------------------------------------------------------


def test_port_channels_and_prefix() -> None:
    assert [port_channels(i) for i in range(3)] == [(0, 1), (2, 3), (4, 5)]
    assert port_prefix(80) == b"\x50\x00"
    assert port_prefix(8080) == b"\x90\x1f"


async def test_port_forward_announces_each_port_on_its_two_channels() -> None:
    async with session([V4], PORTFORWARD_PROTOCOLS) as (ws, client):
        await announce_ports(ChannelConnection(ws), [80, 8080])
        messages = [await client.message() for _ in range(4)]
        assert messages == [b"\x00\x50\x00", b"\x01\x50\x00", b"\x02\x90\x1f", b"\x03\x90\x1f"]


async def test_port_forward_announces_in_base64() -> None:
    async with session([V4_BASE64], PORTFORWARD_PROTOCOLS) as (ws, client):
        await announce_ports(ChannelConnection(ws), [8080])
        prefix = base64.b64encode(b"\x90\x1f").decode()
        assert [await client.message() for _ in range(2)] == ["0" + prefix, "1" + prefix]


async def test_too_many_ports_for_the_channels_are_refused() -> None:
    async with session([V4], PORTFORWARD_PROTOCOLS) as (ws, _client):
        with pytest.raises(ValueError, match="256 channels"):
            await announce_ports(ChannelConnection(ws), list(range(1, 130)))


# --- the SPDY tunnel ------------------------------------------------------------------------


async def test_the_tunnel_is_no_channel_protocol() -> None:
    async with session([SPDY_TUNNEL], PORTFORWARD_PROTOCOLS) as (ws, _client):
        with pytest.raises(ValueError, match="not a channel protocol"):
            ChannelConnection(ws)


async def test_the_byte_stream_ignores_message_boundaries() -> None:
    async with session([SPDY_TUNNEL], PORTFORWARD_PROTOCOLS) as (ws, client):
        stream = WebSocketByteStream(ws)
        for piece in (b"abc", b"", b"defg"):
            await client.send(BytesMessage(data=piece))
        assert await stream.receive(2) == b"ab"
        assert await stream.receive() == b"c"
        assert await stream.receive() == b"defg"
        await stream.send(b"xyz")
        await stream.send(memoryview(b"uvw"))
        assert [await client.message() for _ in range(2)] == [b"xyz", b"uvw"]


async def test_the_byte_stream_round_trip() -> None:
    payload = os.urandom(1 << 20)
    async with session([SPDY_TUNNEL], PORTFORWARD_PROTOCOLS) as (ws, client):
        stream = WebSocketByteStream(ws)
        echoed = bytearray()

        async def upload() -> None:
            offset, step = 0, 1
            while offset < len(payload):
                await client.send(BytesMessage(data=payload[offset : offset + step]))
                offset += step
                step = step * 7 % 40_000 + 1  # sizes from 1 byte to ~40 KiB

        async def echo() -> None:
            received = 0
            while received < len(payload):
                chunk = await stream.receive()
                received += len(chunk)
                await stream.send(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            tg.start_soon(echo)
            while len(echoed) < len(payload):
                message = await client.message()
                assert isinstance(message, bytes)
                echoed += message
        assert echoed == payload
        await client.send(CloseConnection(code=1000))
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_a_text_message_breaks_the_tunnel() -> None:
    async with session([SPDY_TUNNEL], PORTFORWARD_PROTOCOLS) as (ws, client):
        await client.send(TextMessage(data="SPDY?"))
        with pytest.raises(anyio.BrokenResourceError):
            await WebSocketByteStream(ws).receive()
        assert await client.closed_with() == 1003


async def test_closing_the_byte_stream_closes_the_websocket() -> None:
    async with session([SPDY_TUNNEL], PORTFORWARD_PROTOCOLS, close_timeout=5) as (ws, client):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.closed_with)
            await WebSocketByteStream(ws).aclose()
        assert ws.close_code == 1000
        assert await client.at_eof()
