"""SPDY/3.1: the frame codec on its own, then connections over real loopback TCP, against our
own other side and against a raw peer that writes whatever frames (or bytes) a test needs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from criproxy.streaming.spdy import (
    CANCEL,
    CONNECTION_BUFFER,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    FLOW_CONTROL_ERROR,
    GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR,
    HEADER_DICTIONARY,
    INVALID_STREAM,
    MAX_DATA_FRAME,
    PROTOCOL_ERROR,
    READ_SIZE,
    REFUSED_STREAM,
    SETTINGS_INITIAL_WINDOW_SIZE,
    STREAM_ALREADY_CLOSED,
    STREAM_BUFFER,
    Data,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    Headers,
    Ping,
    RstStream,
    Settings,
    SpdyConnection,
    SpdyProtocolError,
    SpdyStream,
    SpdyStreamError,
    SynReply,
    SynStream,
    WindowUpdate,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def control(frame_type: int, payload: bytes, *, flags: int = 0, version: int = 3) -> bytes:
    """A control frame built by hand, so tests can write what the encoder never would."""
    head = (0x8000 | version) << 16 | frame_type
    return head.to_bytes(4, "big") + (flags << 24 | len(payload)).to_bytes(4, "big") + payload


def compressed(raw: bytes) -> bytes:
    """A header block as a fresh sending context would compress it."""
    deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)
    return deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)


def decode_all(data: bytes, decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


# ---------------------------------------------------------------------------- the codec

ALL_FRAMES: list[Frame] = [
    SynStream(1, {"streamtype": "error"}),
    SynStream(3, {"streamtype": "stdin", "x": "a\0b"}, FLAG_FIN | FLAG_UNIDIRECTIONAL, 1, 7, 2),
    SynReply(1, {}),
    SynReply(3, {"status": "200"}, FLAG_FIN),
    RstStream(5, CANCEL),
    Settings({SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, 4: 100}),
    Settings({}, flags=1),
    Ping(1),
    Ping(0xFFFFFFFF),
    GoAway(7, GOAWAY_PROTOCOL_ERROR),
    GoAway(0),
    Headers(3, {"extra": "yes"}, FLAG_FIN),
    WindowUpdate(0, 65536),
    WindowUpdate(3, 0x7FFFFFFF),
    Data(3, b"hello"),
    Data(3, b"", FLAG_FIN),
    Data(0x7FFFFFFF, bytes(range(256)) * 8),
]


def test_the_header_dictionary_is_spdy3s() -> None:
    # length and Adler-32 (the DICTID in every SPDY/3 header block's zlib header, which
    # spdystream's bytes below carry too), first and last words
    assert len(HEADER_DICTIONARY) == 1423
    assert zlib.adler32(HEADER_DICTIONARY) == 0xE3C6A7C2
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert b"\x00\x00\x00\x06origin100101201202" in HEADER_DICTIONARY
    assert HEADER_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_every_frame_type_round_trips() -> None:
    encoder = FrameEncoder()
    wire = b"".join(encoder.encode(frame) for frame in ALL_FRAMES)
    assert decode_all(wire) == ALL_FRAMES


def test_frames_split_byte_by_byte_decode_the_same() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    wire = b"".join(encoder.encode(frame) for frame in ALL_FRAMES)
    frames = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == ALL_FRAMES
    assert not decoder.mid_frame


def test_header_blocks_share_one_compression_context_per_direction() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    headers = {"streamtype": "stdout", "port": "8080", "requestid": "17"}
    first = encoder.encode(SynStream(1, headers))
    second = encoder.encode(SynStream(3, headers))
    third = encoder.encode(SynReply(3, {"streamtype": "stdout"}))
    # the second block only refers back to the first one: much shorter
    assert len(second) < len(first) - 10
    assert decode_all(first + second + third, decoder) == [
        SynStream(1, headers),
        SynStream(3, headers),
        SynReply(3, {"streamtype": "stdout"}),
    ]
    # without the first block's context the second one does not inflate
    with pytest.raises(SpdyProtocolError):
        decode_all(second)


# Bytes written by moby/spdystream v0.5.1 (the Go library kubectl, crictl, critest and the
# kubelet use), as vendored by cri-tools 1.36: a spdystream client connection (Go 1.27,
# `spdystream.NewConnection(conn, false)`) opened streams {streamType: error}, {streamType:
# stdout}, {streamType: stdin} (wrote "hello\n" and FIN on it), then {streamType: data,
# port: 8080, requestID: 0, X-Multi: [a, b]} with FIN, to a TCP listener that recorded the
# bytes. One zlib context runs through all four header blocks.
SPDYSTREAM_CLIENT_CAPTURE = bytes.fromhex(
    "800300010000002a0000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a5a54"
    "945f04000000ffff800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff80"
    "0300010000001700000005000000000000c2aeadb82425330f000000ffff0000000500000006"
    "68656c6c6f0a000000050100000080030001010000420000000700000000000062606060616060e0"
    "2c82c478660a48ad010303037b856e6e694e492603030373224312867650019608a90b8a4a40b48581"
    "8501000000ffff"
)


def test_header_blocks_written_by_spdystream_decode() -> None:
    frames = decode_all(SPDYSTREAM_CLIENT_CAPTURE)
    assert frames == [
        SynStream(1, {"streamtype": "error"}),
        SynStream(3, {"streamtype": "stdout"}),
        SynStream(5, {"streamtype": "stdin"}),
        Data(5, b"hello\n"),
        Data(5, b"", FLAG_FIN),
        SynStream(
            7,
            {"streamtype": "data", "port": "8080", "requestid": "0", "x-multi": "a\0b"},
            FLAG_FIN,
        ),
    ]
    # and byte by byte
    decoder, pieces = FrameDecoder(), []
    for byte in SPDYSTREAM_CLIENT_CAPTURE:
        decoder.feed(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            pieces.append(frame)
    assert pieces == frames


def test_a_long_data_frame_is_handed_out_in_pieces_as_it_arrives() -> None:
    payload = os.urandom(1 << 20)
    wire = FrameEncoder().encode(Data(1, payload, FLAG_FIN))
    decoder, pieces = FrameDecoder(), []
    for i in range(0, len(wire), 65536):
        decoder.feed(wire[i : i + 65536])
        assert decoder.buffered <= 65536 + 8
        while (frame := decoder.next_frame()) is not None:
            assert isinstance(frame, Data)
            pieces.append(frame)
        assert decoder.buffered < 16 * 1024
    assert len(pieces) > 10
    assert b"".join(p.data for p in pieces) == payload
    assert [p.flags for p in pieces] == [0] * (len(pieces) - 1) + [FLAG_FIN]


def test_unknown_control_frames_are_skipped_even_large_ones() -> None:
    encoder = FrameEncoder()
    credential = control(10, b"\xab" * 100_000)  # CREDENTIAL, which we do not implement
    noop = control(5, b"")  # SPDY/2's NOOP
    wire = credential + noop + encoder.encode(Ping(3))
    decoder, frames = FrameDecoder(max_header_block=1024), []
    for i in range(0, len(wire), 1000):
        decoder.feed(wire[i : i + 1000])
        assert decoder.buffered <= 1000 + 8
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == [Ping(3)]


def test_a_header_block_that_inflates_past_the_limit_is_a_protocol_error() -> None:
    bomb = compressed(b"\0" * (8 << 20))  # 8 MiB of zeros in a few KiB
    assert len(bomb) < 16 * 1024
    frame = control(1, (1).to_bytes(4, "big") + bytes(6) + bomb)
    with pytest.raises(SpdyProtocolError, match="inflates past"):
        decode_all(frame, FrameDecoder(max_header_block=64 * 1024))


def test_an_oversized_control_frame_is_refused_before_it_is_read() -> None:
    decoder = FrameDecoder(max_header_block=64 * 1024)
    decoder.feed(control(1, b"")[:4] + (0xFFFFFF).to_bytes(4, "big"))  # just the header
    with pytest.raises(SpdyProtocolError, match="control frame of 16777215 bytes"):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\xff\xfe\x00\x01" + bytes(20), "SPDY version 32766"),
        (control(6, b"\0\0\0\1", version=2), "SPDY version 2"),
        (control(6, b"\0\0\0\1\0"), "PING frame"),
        (control(7, b"\0\0\0\1"), "GOAWAY frame"),  # SPDY/2's 4-byte GOAWAY
        (control(9, b"\0\0\0\1\0\0\0\0"), "WINDOW_UPDATE of 0"),
        (control(3, b"\0\0\0\1\0\0\0\0"), "RST_STREAM"),
        (control(4, b"\0\0\0\2" + bytes(8)), "SETTINGS frame"),
        (control(1, b"\0\0\0\1" + bytes(6) + b"not zlib at all"), "does not inflate"),
        (control(1, bytes(10) + compressed(b"\0\0\0\0")), "SYN_STREAM on stream 0"),
        (b"\0\0\0\0\0\0\0\0", "DATA frame on stream 0"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, message: str) -> None:
    with pytest.raises(SpdyProtocolError, match=message):
        decode_all(wire)


def _pairs(*pairs: tuple[bytes, bytes]) -> bytes:
    out = len(pairs).to_bytes(4, "big")
    for name, value in pairs:
        out += len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value
    return out


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (_pairs((b"a", b"1"), (b"a", b"2")), "given twice"),
        (_pairs((b"", b"1")), "empty header name"),
        (_pairs((b"connection", b"close")), "forbidden"),
        (_pairs((b"host", b"x")), "forbidden"),
        (_pairs((b"a", b"1"))[:-1], "truncated"),
        (_pairs((b"a", b"1")) + b"junk", "trailing"),
        ((1000).to_bytes(4, "big"), "cannot fit"),
    ],
)
def test_a_bad_header_block_resets_its_stream_and_keeps_the_context(
    block: bytes, message: str
) -> None:
    """The frame is consumed whole and the shared zlib context moves on, so later frames
    still decode: the connection survives, only the stream is reset."""
    deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)

    def syn(stream_id: int, raw: bytes) -> bytes:
        block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
        return control(1, stream_id.to_bytes(4, "big") + bytes(6) + block)

    decoder = FrameDecoder()
    decoder.feed(syn(1, block) + syn(3, _pairs((b"streamtype", b"stdout"))))
    with pytest.raises(SpdyStreamError, match=message) as caught:
        decoder.next_frame()
    assert (caught.value.stream_id, caught.value.status) == (1, PROTOCOL_ERROR)
    assert decoder.next_frame() == SynStream(3, {"streamtype": "stdout"})


def test_upper_case_header_names_are_lowered_both_ways() -> None:
    encoder = FrameEncoder()
    assert decode_all(encoder.encode(SynStream(1, {"StreamType": "error"}))) == [
        SynStream(1, {"streamtype": "error"})
    ]
    raw = control(2, (1).to_bytes(4, "big") + compressed(_pairs((b"Echoed", b"x"))))
    assert decode_all(raw) == [SynReply(1, {"echoed": "x"})]


def test_the_encoder_refuses_bad_headers_without_moving_its_context() -> None:
    encoder = FrameEncoder()
    with pytest.raises(ValueError, match="twice"):
        encoder.encode(SynStream(1, {"A": "1", "a": "2"}))
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(SynReply(1, {"": "1"}))
    with pytest.raises(ValueError, match="stream id"):
        encoder.encode(SynStream(0, {}))
    # the context is unharmed: a fresh decoder follows from the start
    assert decode_all(encoder.encode(SynStream(1, {"a": "1"}))) == [SynStream(1, {"a": "1"})]


# ------------------------------------------------------------------ connections over TCP


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def tcp_pair(buffers: int = 0) -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """Two connected ends over loopback; `buffers` caps the kernel's socket buffers (else
    they grow to many MiB, and a peer that reads nothing takes long to push back)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        for sock in (listener, client) if buffers else ():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):  # as anyio's listener and connect_tcp set it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a = await SocketStream.from_socket(server)
    b = await SocketStream.from_socket(client)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


class RawPeer:
    """The other end written by hand: frames from our codec, or any bytes at all."""

    def __init__(self, transport: SocketStream) -> None:
        self.transport = transport
        self.encoder = FrameEncoder()
        self.decoder = FrameDecoder()
        self.seen: list[Frame] = []  # every frame read, in order

    async def send(self, *frames: Frame) -> None:
        await self.transport.send(b"".join(self.encoder.encode(f) for f in frames))

    async def frame(self, timeout: float = 5) -> Frame:
        """The next frame (anyio.EndOfStream once the connection is closed)."""
        with anyio.fail_after(timeout):
            while (frame := self.decoder.next_frame()) is None:
                self.decoder.feed(await self.transport.receive())
        self.seen.append(frame)
        return frame

    async def frame_of(self, kind: type[Frame], timeout: float = 5) -> Frame:
        while not isinstance(frame := await self.frame(timeout), kind):
            pass
        return frame

    async def data(self, stream_id: int, size: int) -> bytes:
        """Exactly `size` bytes of DATA on `stream_id` (other frames are only recorded)."""
        out = bytearray()
        while len(out) < size:
            frame = await self.frame()
            if isinstance(frame, Data) and frame.stream_id == stream_id:
                out += frame.data
        assert len(out) == size
        return bytes(out)

    async def quiet_for(self, seconds: float) -> bool:
        """True if no DATA frame arrives for `seconds`."""
        with anyio.move_on_after(seconds):
            while not isinstance(await self.frame(), Data):
                pass
            return False
        return True

    async def closed(self) -> list[Frame]:
        """Reads until EOF; the frames that came before it."""
        frames = []
        try:
            while True:
                frames.append(await self.frame())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return frames

    def updates(self, stream_id: int) -> int:
        return sum(
            f.delta for f in self.seen if isinstance(f, WindowUpdate) and f.stream_id == stream_id
        )


@dataclass
class Side:
    conn: SpdyConnection
    ended: anyio.Event = field(default_factory=anyio.Event)

    async def run(self) -> None:
        try:
            await self.conn.run()
        finally:
            self.ended.set()


@asynccontextmanager
async def running(tg: TaskGroup, transport: SocketStream, **kwargs: object) -> AsyncIterator[Side]:
    side = Side(SpdyConnection(transport, **kwargs))  # type: ignore[arg-type]
    tg.start_soon(side.run)
    yield side


@asynccontextmanager
async def server_and_raw_client(
    buffers: int = 0, **kwargs: object
) -> AsyncIterator[tuple[SpdyConnection, RawPeer, Side, TaskGroup]]:
    async with tcp_pair(buffers) as (a, b), anyio.create_task_group() as tg:
        async with running(tg, a, server=True, **kwargs) as side:
            peer = RawPeer(b)
            assert [await peer.frame(), await peer.frame()] == ADVERTISED_WINDOWS
            yield side.conn, peer, side, tg
        tg.cancel_scope.cancel()


@asynccontextmanager
async def server_and_client(
    **kwargs: object,
) -> AsyncIterator[tuple[SpdyConnection, SpdyConnection, TaskGroup]]:
    async with tcp_pair() as (a, b), anyio.create_task_group() as tg:
        async with (
            running(tg, a, server=True, **kwargs) as server,
            running(tg, b, server=False) as client,
        ):
            yield server.conn, client.conn, tg
        tg.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("condition not met in time")


ADVERTISED_WINDOWS: list[Frame] = [
    Settings({SETTINGS_INITIAL_WINDOW_SIZE: STREAM_BUFFER}),
    WindowUpdate(0, CONNECTION_BUFFER - 65536),
]
"""What a connection writes first: receive windows as large as the buffers behind them."""


def breaks_in_background(tg: TaskGroup, call: Callable[[], Awaitable[None]]) -> anyio.Event:
    """Runs `call` in `tg`; the event is set once it raised anyio.BrokenResourceError."""
    broken = anyio.Event()

    async def run() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await call()
        broken.set()

    tg.start_soon(run)
    return broken


async def read_all(stream: SpdyStream) -> bytes:
    out = bytearray()
    while True:
        try:
            out += await stream.receive()
        except anyio.EndOfStream:
            return bytes(out)


async def accepted(conn: SpdyConnection, peer: RawPeer, frame: SynStream) -> SpdyStream:
    await peer.send(frame)
    with anyio.fail_after(5):
        return await conn.accept()


async def test_streams_carry_headers_and_data_both_ways_until_both_fins() -> None:
    async with server_and_client() as (server, client, _):
        opened = await client.open({"streamType": "stdin", "requestID": "7"})
        stream = await server.accept()
        assert (stream.id, opened.id) == (1, 1)
        assert dict(stream.headers) == {"streamtype": "stdin", "requestid": "7"}
        await stream.reply({"answer": "yes"})
        await opened.wait_reply()
        assert dict(opened.reply_headers) == {"answer": "yes"}

        await opened.send(b"ping")
        await opened.send_eof()
        assert await read_all(stream) == b"ping"
        assert stream.remote_closed and not stream.local_closed
        await stream.send(memoryview(b"pong"))
        await stream.send_eof()
        await stream.send_eof()  # a second one does nothing
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"more")
        assert await read_all(opened) == b"pong"
        with pytest.raises(anyio.EndOfStream):
            await opened.receive()
        assert not server._streams and not client._streams  # both ends retired the stream

        second = await client.open({"streamtype": "stdout"}, fin=True)
        assert second.id == 3 and second.local_closed
        assert (await server.accept()).remote_closed


async def test_receive_honours_max_bytes_without_losing_anything() -> None:
    async with server_and_client() as (server, client, _):
        opened = await client.open({"a": "b"})
        stream = await server.accept()
        payload = os.urandom(100_000)
        await opened.send(payload)
        await opened.send_eof()
        parts = []
        while True:
            try:
                parts.append(await stream.receive(7000))
            except anyio.EndOfStream:
                break
        assert all(len(p) <= 7000 for p in parts)
        assert b"".join(parts) == payload


async def test_a_writable_buffer_is_copied_before_it_is_sent() -> None:
    async with server_and_client() as (server, client, _):
        opened = await client.open({"a": "b"})
        stream = await server.accept()
        buf = bytearray(b"x" * 1000)
        await opened.send(buf)
        buf[:] = b"y" * 1000
        await opened.send_eof()
        assert await read_all(stream) == b"x" * 1000


async def test_the_server_replies_before_its_first_data_if_the_application_did_not() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdout"}))
        await stream.send(b"out")
        await stream.send_eof()
        assert await peer.frame() == SynReply(1, {})
        assert await peer.frame() == Data(1, b"out")
        assert await peer.frame() == Data(1, b"", FLAG_FIN)
        # send_eof on a stream not yet replied to is a SYN_REPLY with FIN
        other = await accepted(conn, peer, SynStream(3, {"streamtype": "stderr"}))
        await other.send_eof()
        assert await peer.frame() == SynReply(3, {}, FLAG_FIN)


async def test_large_sends_go_out_in_frames_of_at_most_max_data_frame() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdout"}))
        payload = os.urandom(3 * MAX_DATA_FRAME + 5)
        tg.start_soon(stream.send, payload)
        assert await peer.data(1, len(payload)) == payload
        sizes, size = [], 0
        for frame in peer.seen:  # the decoder hands out pieces: add them up per frame
            if isinstance(frame, Data):
                size += len(frame.data)
                if size in (MAX_DATA_FRAME, 5):
                    sizes.append(size)
                    size = 0
        assert sizes == [MAX_DATA_FRAME] * 3 + [5]


async def test_pings_are_answered_and_ours_are_echoed() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        await peer.send(Ping(1), Ping(3))
        assert await peer.frame() == Ping(1)
        assert await peer.frame() == Ping(3)

        done = anyio.Event()

        async def ping() -> None:
            await conn.ping()
            done.set()

        tg.start_soon(ping)
        ours = await peer.frame()
        assert ours == Ping(2)  # the server's pings are even
        assert not done.is_set()
        await peer.send(ours)
        with anyio.fail_after(5):
            await done.wait()
    async with server_and_client() as (server, client, _):
        with anyio.fail_after(5):
            await client.ping()
            await server.ping()


async def test_a_ping_without_echo_fails_when_the_connection_ends() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        failed = breaks_in_background(tg, conn.ping)
        assert await peer.frame() == Ping(2)
        await peer.transport.aclose()
        with anyio.fail_after(5):
            await failed.wait()


async def test_the_peers_pings_are_not_activity_but_data_is() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdin"}))
        before = conn.last_activity
        for i in range(5):
            await anyio.sleep(0.01)
            await peer.send(Ping(2 * i + 1))
            assert await peer.frame() == Ping(2 * i + 1)
        assert conn.last_activity == before
        await peer.send(Data(1, b"typed"))
        assert await stream.receive() == b"typed"
        assert conn.last_activity > before
        moved = conn.last_activity
        await anyio.sleep(0.01)
        await stream.send(b"echo")  # writing counts too
        assert conn.last_activity > moved


async def test_a_reset_from_the_peer_breaks_the_stream_both_ways() -> None:
    async with server_and_client() as (server, client, _):
        opened = await client.open({"streamtype": "stdin"})
        stream = await server.accept()
        await opened.send(b"lost")
        await opened.reset()
        await eventually(lambda: stream.reset_status is not None)
        assert stream.reset_status == CANCEL
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()  # buffered data is dropped with the stream
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")
        with pytest.raises(anyio.BrokenResourceError):
            await stream.reply()
        with pytest.raises(anyio.BrokenResourceError):
            await opened.receive()
        await opened.reset()  # again: nothing happens
        assert server._buffered == 0


async def test_our_reset_reaches_the_peer_and_wakes_a_waiting_reply() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdout"}))
        await stream.reset(INVALID_STREAM)
        assert await peer.frame() == RstStream(1, INVALID_STREAM)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
    async with server_and_client() as (server, client, tg):
        opened = await client.open({"streamtype": "stdout"})
        failed = breaks_in_background(tg, opened.wait_reply)
        await (await server.accept()).reset(REFUSED_STREAM)
        with anyio.fail_after(5):
            await failed.wait()
        assert opened.reset_status == REFUSED_STREAM


CLOSE_TIMEOUT_BOUND = 1.5


async def test_goaway_from_the_peer_ends_the_connection_and_every_stream() -> None:
    async with server_and_client() as (server, client, _):
        before = open_fds()
        raw = server._transport.extra(SocketAttribute.raw_socket)
        opened = await client.open({"streamtype": "stdin"})
        stream = await server.accept()
        await opened.send(b"last words")
        with anyio.fail_after(CLOSE_TIMEOUT_BOUND):
            await client.aclose()  # GOAWAY, then waits for the server to close
        await eventually(lambda: server._done)
        assert await stream.receive() == b"last words"  # what arrived is still read
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()  # then: no FIN came
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")
        with pytest.raises(anyio.EndOfStream):
            await server.accept()
        with pytest.raises(anyio.BrokenResourceError):
            await server.open({"a": "b"})
        await anyio.sleep(0.05)
        assert raw.fileno() == -1
        assert len(open_fds()) <= len(before) - 2  # both sockets closed by their runs


async def test_aclose_sends_goaway_ok_with_the_last_stream_it_accepted() -> None:
    async with server_and_raw_client() as (conn, peer, side, tg):
        await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await accepted(conn, peer, SynStream(5, {"a": "b"}))
        tg.start_soon(conn.aclose)
        assert await peer.frame() == GoAway(5, GOAWAY_OK)
        with pytest.raises(anyio.EndOfStream):
            await conn.accept()
        await peer.send(SynStream(7, {"a": "b"}))  # ignored after our GOAWAY
        await peer.transport.aclose()  # the peer closes: aclose() returns, run() ends
        with anyio.fail_after(5):
            await side.ended.wait()


async def test_a_flow_control_aware_peer_stalls_our_sends_at_its_windows() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        await peer.send(Settings({SETTINGS_INITIAL_WINDOW_SIZE: 10_000}))
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdout"}))
        payload = os.urandom(150_000)
        sent = anyio.Event()

        async def send() -> None:
            await stream.send(payload)
            sent.set()

        tg.start_soon(send)
        got = await peer.data(1, 10_000)  # the stream window
        assert await peer.quiet_for(0.2)
        await peer.send(WindowUpdate(1, 30_000))
        got += await peer.data(1, 30_000)
        assert await peer.quiet_for(0.2)
        await peer.send(WindowUpdate(1, 200_000))
        got += await peer.data(1, 65536 - 40_000)  # now the connection window (64 KiB)
        assert await peer.quiet_for(0.2)
        assert not sent.is_set()
        await peer.send(WindowUpdate(0, 100_000))
        got += await peer.data(1, len(payload) - 65536)
        with anyio.fail_after(5):
            await sent.wait()
        assert got == payload


async def test_a_peer_that_never_sends_window_updates_does_not_stall_us() -> None:
    """spdystream (kubectl, crictl, the kubelet) keeps no windows: waiting for its
    WINDOW_UPDATE would hang every exec after 64 KiB of output."""
    async with server_and_raw_client() as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdout"}))
        payload = os.urandom(2 << 20)
        tg.start_soon(stream.send, payload)
        assert await peer.data(1, len(payload)) == payload


async def test_window_updates_follow_what_the_application_consumed() -> None:
    async with server_and_raw_client() as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdin"}))
        size = 1 << 20
        tg.start_soon(peer.send, *[Data(1, os.urandom(65536)) for _ in range(size // 65536)])
        assert await peer.quiet_for(0.2)
        assert peer.updates(1) == 0  # nothing consumed, nothing returned
        got = 0
        while got < size:
            got += len(await stream.receive())
        tg.start_soon(stream.receive)  # the next receive() returns what is owed
        with anyio.fail_after(5):
            while peer.updates(1) <= size - STREAM_BUFFER // 2:
                await peer.frame()
        # returned in steps of half a window or more
        assert size - STREAM_BUFFER // 2 < peer.updates(1) <= size
        returned = peer.updates(0) - (CONNECTION_BUFFER - 65536)
        assert size - CONNECTION_BUFFER // 2 < returned <= size


async def test_a_peer_that_keeps_our_windows_gets_all_its_data_through() -> None:
    """The window updates we send are enough for a sender that waits for them."""
    async with server_and_raw_client() as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdin"}))
        payload = os.urandom(4 << 20)
        received = []

        async def app() -> None:
            received.append(await read_all(stream))

        tg.start_soon(app)
        sent = 0
        with anyio.fail_after(10):
            while sent < len(payload):
                room = min(STREAM_BUFFER + peer.updates(1) - sent, 65536 + peer.updates(0) - sent)
                if room <= 0:
                    await peer.frame()  # wait for a WINDOW_UPDATE
                    continue
                size = min(room, 16384, len(payload) - sent)
                await peer.send(Data(1, payload[sent : sent + size]))
                sent += size
            await peer.send(Data(1, b"", FLAG_FIN))
        await eventually(lambda: bool(received))
        assert received == [payload]


async def test_a_peer_flooding_a_stream_nobody_reads_is_held_back_by_tcp() -> None:
    async with server_and_raw_client(buffers=64 * 1024) as (conn, peer, _, tg):
        stream = await accepted(conn, peer, SynStream(1, {"streamtype": "stdin"}))
        chunk = peer.encoder.encode(Data(1, b"\x5a" * 65536))
        total, sent = 256, [0]

        async def flood() -> None:
            for _ in range(total):
                await peer.transport.send(chunk)
                sent[0] += 1
            await peer.send(Data(1, b"", FLAG_FIN))

        tg.start_soon(flood)
        last = -1
        while sent[0] != last:  # until the flood is stuck
            last = sent[0]
            await anyio.sleep(0.3)
        assert sent[0] < total // 2  # 8 MiB did not fit: TCP pushed back
        assert stream._buffered <= STREAM_BUFFER + READ_SIZE
        assert conn._decoder.buffered <= READ_SIZE + 16 * 1024
        received = len(await read_all(stream))  # reading lets it all through
        assert received == total * 65536


async def test_a_zlib_bomb_closes_the_connection() -> None:
    async with server_and_raw_client(max_header_block=64 * 1024) as (conn, peer, side, _):
        fds = open_fds()
        bomb = compressed(b"\0" * (32 << 20))
        await peer.transport.send(control(1, (1).to_bytes(4, "big") + bytes(6) + bomb))
        assert await peer.closed() == [GoAway(0, GOAWAY_PROTOCOL_ERROR)]
        with anyio.fail_after(5):
            await side.ended.wait()
        assert isinstance(conn.error, SpdyProtocolError)
        await anyio.sleep(0.05)
        assert len(open_fds()) < len(fds)


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"\xde\xad\xbe\xef" * 10, id="garbage"),
        pytest.param(control(1, b"")[:4] + (0xFFFFFF).to_bytes(4, "big"), id="oversized"),
        pytest.param(control(9, bytes(8)), id="malformed"),
    ],
)
async def test_bad_bytes_close_the_connection(wire: bytes) -> None:
    async with server_and_raw_client() as (conn, peer, side, _):
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.transport.send(wire)
        frames = await peer.closed()
        assert frames[-1] == GoAway(1, GOAWAY_PROTOCOL_ERROR)
        with anyio.fail_after(5):
            await side.ended.wait()
        assert conn.error is not None
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()


async def test_a_reused_or_decreasing_stream_id_is_reset_and_the_connection_goes_on() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        first = await accepted(conn, peer, SynStream(1, {"n": "1"}))
        await peer.send(SynStream(1, {"n": "again"}))
        assert await peer.frame() == RstStream(1, PROTOCOL_ERROR)
        with pytest.raises(anyio.BrokenResourceError):
            await first.receive()  # the peer sees stream 1 reset: so do we
        await accepted(conn, peer, SynStream(5, {"n": "5"}))
        await peer.send(SynStream(3, {"n": "3"}))
        assert await peer.frame() == RstStream(3, PROTOCOL_ERROR)
        await peer.send(SynStream(2, {"n": "even"}))  # the server's own parity
        assert await peer.frame() == RstStream(2, PROTOCOL_ERROR)
        seventh = await accepted(conn, peer, SynStream(7, {"n": "7"}))
        assert dict(seventh.headers) == {"n": "7"}
        # a header block bad for its stream only: reset, and the context still in step
        await peer.transport.send(
            peer.encoder.encode(SynStream(9, {"a": "1"}))
            + control(1, (11).to_bytes(4, "big") + bytes(6) + b"")  # no block at all
        )
        assert (await conn.accept()).id == 9
        assert await peer.frame() == RstStream(11, PROTOCOL_ERROR)
        assert (await accepted(conn, peer, SynStream(13, {"ok": "yes"}))).headers == {"ok": "yes"}


async def test_frames_for_unknown_or_finished_streams() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        await peer.send(Data(99, b"who?"))
        assert await peer.frame() == RstStream(99, INVALID_STREAM)
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}, FLAG_FIN))
        await peer.send(Data(1, b"after fin"))
        assert await peer.frame() == RstStream(1, STREAM_ALREADY_CLOSED)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        await peer.send(Data(1, b"after reset"), SynReply(77, {}), Headers(77, {}))
        await peer.send(Ping(5))
        assert await peer.frame() == Ping(5)  # all of that dropped quietly


async def test_window_update_overflow_resets_the_stream() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.send(WindowUpdate(1, 0x7FFFFFFF))
        assert await peer.frame() == RstStream(1, FLOW_CONTROL_ERROR)
        assert stream.reset_status == FLOW_CONTROL_ERROR


async def test_headers_frames_add_to_a_streams_headers() -> None:
    async with server_and_raw_client() as (conn, peer, _, _):
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.send(Headers(1, {"c": "d"}, FLAG_FIN))
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        assert dict(stream.headers) == {"a": "b", "c": "d"}


async def test_a_disconnect_mid_frame_ends_everything_and_leaves_nothing() -> None:
    async with server_and_raw_client() as (conn, peer, side, _):
        raw = conn._transport.extra(SocketAttribute.raw_socket)
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.transport.send(peer.encoder.encode(Data(1, b"0123456789"))[:13])
        await peer.transport.aclose()
        with anyio.fail_after(5):
            await side.ended.wait()
        assert conn.error is None
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        with pytest.raises(anyio.EndOfStream):
            await conn.accept()
        await anyio.sleep(0.05)
        assert raw.fileno() == -1


async def test_the_peers_fin_before_its_disconnect_is_an_end_of_stream() -> None:
    async with server_and_raw_client() as (conn, peer, side, _):
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.send(Data(1, b"all of it", FLAG_FIN))
        await peer.transport.aclose()
        with anyio.fail_after(5):
            await side.ended.wait()
        assert await read_all(stream) == b"all of it"


async def test_more_streams_than_allowed_are_refused() -> None:
    async with server_and_raw_client(max_streams=2) as (conn, peer, _, _):
        await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await accepted(conn, peer, SynStream(3, {"a": "b"}))
        await peer.send(SynStream(5, {"a": "b"}))
        assert await peer.frame() == RstStream(5, REFUSED_STREAM)


async def test_bytes_read_before_the_upgrade_are_parsed_first() -> None:
    async with tcp_pair() as (a, b), anyio.create_task_group() as tg:
        encoder = FrameEncoder()
        head = encoder.encode(SynStream(1, {"streamtype": "error"}))
        tail = encoder.encode(Data(1, b"hi", FLAG_FIN))
        conn = SpdyConnection(a, server=True, initial=head)
        tg.start_soon(conn.run)
        await b.send(tail)
        stream = await conn.accept()
        assert stream.headers == {"streamtype": "error"}
        assert await read_all(stream) == b"hi"
        tg.cancel_scope.cancel()


async def test_open_refuses_hop_by_hop_headers() -> None:
    async with server_and_client() as (_, client, _):
        with pytest.raises(ValueError, match="connection"):
            await client.open({"Connection": "close"})


async def test_many_concurrent_streams() -> None:
    payloads = {i: os.urandom(1000 + 37 * i) for i in range(200)}
    async with server_and_client() as (server, client, tg):

        async def echo_all() -> None:
            async with anyio.create_task_group() as echoes:
                for _ in payloads:
                    echoes.start_soon(echo, await server.accept())

        async def echo(stream: SpdyStream) -> None:
            await stream.reply()
            await stream.send(await read_all(stream))
            await stream.send_eof()

        async def one(i: int, results: dict[int, bytes]) -> None:
            stream = await client.open({"n": str(i)})
            await stream.send(payloads[i])
            await stream.send_eof()
            await stream.wait_reply()
            results[i] = await read_all(stream)

        tg.start_soon(echo_all)
        results: dict[int, bytes] = {}
        with anyio.fail_after(20):
            async with anyio.create_task_group() as clients:
                for i in payloads:
                    clients.start_soon(one, i, results)
        assert results == payloads
        assert not server._streams and not client._streams


async def test_a_send_cancelled_inside_a_write_closes_the_connection() -> None:
    """Part of a frame may be on the wire: nothing else can follow it."""
    async with server_and_raw_client(buffers=64 * 1024) as (conn, peer, side, _):
        stream = await accepted(conn, peer, SynStream(1, {"a": "b"}))
        await peer.send(Ping(1))
        assert await peer.frame() == Ping(1)  # anyio reads ahead until the first receive()
        with anyio.move_on_after(0.5):
            await stream.send(os.urandom(64 << 20))  # the peer reads nothing
        with anyio.fail_after(5):
            await side.ended.wait()
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")


async def test_run_leaves_no_task_or_fd_behind_when_cancelled() -> None:
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    for _ in range(3):
        async with server_and_client() as (server, client, _):
            opened = await client.open({"a": "b"})
            stream = await server.accept()
            await opened.send(b"x")
            assert await stream.receive() == b"x"
        # the task group cancelled both runs in the middle of it all
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        with pytest.raises(anyio.EndOfStream):
            await server.accept()
    await anyio.sleep(0.05)
    assert open_fds() == fds
    assert len(asyncio.all_tasks()) == tasks
