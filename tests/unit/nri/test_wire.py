"""ttrpc over NRI's multiplexer, both ends here: the bytes on the wire, calls and their
failures, and frames no larger than a Go peer reads at once."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import grpc
import pytest
from anyio.abc import UNIXSocketStream

from criproxy._generated.ttrpc import request_pb2
from criproxy.nri import mux, ttrpc

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Recorder:
    """A stream that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        raise AssertionError("not read")

    async def write(self, data: bytes) -> None:
        self.data += data


async def test_a_message_is_a_big_endian_header_and_its_payload() -> None:
    out = _Recorder()
    await ttrpc.write_message(out, 3, ttrpc.REQUEST, b"hello")
    assert bytes(out.data) == b"\x00\x00\x00\x05" + b"\x00\x00\x00\x03" + b"\x01\x00" + b"hello"


async def _pair() -> tuple[mux.Mux, mux.Mux, list[int]]:
    """Two multiplexers over a socketpair; the sizes of the frames the left one writes."""
    left_sock, right_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = await UNIXSocketStream.from_socket(left_sock)
    right = await UNIXSocketStream.from_socket(right_sock)
    sizes: list[int] = []
    send = left.send

    async def recording(item: bytes) -> None:
        sizes.append(struct.unpack(">II", item[:8])[1])
        await send(item)

    left.send = recording  # type: ignore[method-assign]
    return mux.Mux(left), mux.Mux(right), sizes


Handler = Callable[[bytes], Awaitable[bytes]]


@contextlib.asynccontextmanager
async def _wired() -> AsyncIterator[tuple[ttrpc.Client, dict[tuple[str, str], Handler], list[int]]]:
    """A client on the left's connection 1, a server on the right's."""
    left, right, sizes = await _pair()
    methods: dict[tuple[str, str], Handler] = {}
    client = ttrpc.Client(left.open(mux.PLUGIN_SERVICE_CONN))
    server = ttrpc.Server(right.open(mux.PLUGIN_SERVICE_CONN), methods)
    async with anyio.create_task_group() as tg:
        for runner in (left.run, right.run, client.run, server.run):
            tg.start_soon(runner)
        try:
            yield client, methods, sizes
        finally:
            await left.aclose()
            await right.aclose()


def _kv(key: str, value: str) -> request_pb2.KeyValue:
    return request_pb2.KeyValue(key=key, value=value)


async def test_calls_are_answered_and_big_ones_cross_in_small_frames() -> None:
    async with _wired() as (client, methods, sizes):
        await _calls(client, methods, sizes)


async def _calls(
    client: ttrpc.Client, methods: dict[tuple[str, str], Handler], sizes: list[int]
) -> None:
    async def echo(payload: bytes) -> bytes:
        got = request_pb2.KeyValue.FromString(payload)
        return _kv(got.value, got.key).SerializeToString()

    methods["test.Echo", "Swap"] = echo
    answer = await client.call("test.Echo", "Swap", _kv("a", "b"), request_pb2.KeyValue, 5)
    assert (answer.key, answer.value) == ("b", "a")
    big = "x" * (1 << 20)
    answer = await client.call("test.Echo", "Swap", _kv("k", big), request_pb2.KeyValue, 5)
    assert answer.key == big
    assert max(sizes) <= mux.MAX_WRITE  # what a Go peer's 4 KiB read takes whole
    async with anyio.create_task_group() as tg:  # calls in flight at once
        for i in range(20):
            tg.start_soon(
                client.call, "test.Echo", "Swap", _kv(str(i), ""), request_pb2.KeyValue, 5
            )


async def test_failures_carry_their_status() -> None:
    async with _wired() as (client, methods, _):
        await _failures(client, methods)


async def _failures(client: ttrpc.Client, methods: dict[tuple[str, str], Handler]) -> None:
    async def refuse(payload: bytes) -> bytes:
        raise ttrpc.TtrpcError(grpc.StatusCode.FAILED_PRECONDITION, "not now")

    async def slow(payload: bytes) -> bytes:
        await anyio.sleep(10)
        return b""

    methods["test.Svc", "Refuse"] = refuse
    methods["test.Svc", "Slow"] = slow
    with pytest.raises(ttrpc.TtrpcError) as err:
        await client.call("test.Svc", "Refuse", _kv("", ""), request_pb2.KeyValue, 5)
    assert (err.value.code, err.value.message) == (grpc.StatusCode.FAILED_PRECONDITION, "not now")
    with pytest.raises(ttrpc.TtrpcError) as err:
        await client.call("test.Svc", "Missing", _kv("", ""), request_pb2.KeyValue, 5)
    assert err.value.code == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(ttrpc.TtrpcError) as err:
        await client.call("test.Svc", "Slow", _kv("", ""), request_pb2.KeyValue, 0.2)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_connection_that_goes_ends_the_calls_waiting_on_it() -> None:
    left, right, _ = await _pair()
    client = ttrpc.Client(left.open(mux.PLUGIN_SERVICE_CONN))
    right.open(mux.PLUGIN_SERVICE_CONN)  # nobody serves: the call waits
    async with anyio.create_task_group() as tg:
        for runner in (left.run, right.run, client.run):
            tg.start_soon(runner)
        with anyio.fail_after(5):
            tg.start_soon(_close_soon, right)
            with pytest.raises(ttrpc.Closed):
                await client.call("test.Svc", "Any", _kv("", ""), request_pb2.KeyValue, 30)
        await left.aclose()
    with pytest.raises(ttrpc.Closed):
        await client.call("test.Svc", "Any", _kv("", ""), request_pb2.KeyValue, 1)


async def _close_soon(m: mux.Mux) -> None:
    await anyio.sleep(0.1)
    await m.aclose()


async def test_frames_for_a_connection_nobody_opened_are_dropped() -> None:
    left, right, _ = await _pair()
    opened = right.open(mux.RUNTIME_SERVICE_CONN)
    async with anyio.create_task_group() as tg:
        tg.start_soon(right.run)
        await left.write(7, b"for nobody")
        await left.write(mux.RUNTIME_SERVICE_CONN, b"for conn 2")
        with anyio.fail_after(5):
            assert await opened.read_exactly(10) == b"for conn 2"
        await left.aclose()
        await right.aclose()
