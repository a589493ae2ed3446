"""SocketByteStream and the listener helpers, over real TCP connections on loopback."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import anyio
import pytest

from criproxy.network.sockets import SocketByteStream, accept, listen_tcp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SocketByteStream, SocketByteStream]]:
    """(server side, client side) of one loopback connection."""
    listener = listen_tcp("127.0.0.1", 0)
    client = socket.socket()
    try:
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(listener.getsockname())
        server = await accept(listener)
        async with server, SocketByteStream(client) as peer:
            yield server, peer
    finally:
        listener.close()
        client.close()


async def test_bytes_go_both_ways_and_eof_ends_the_readers_stream(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, client = pair
    await client.send(b"ping")
    assert await server.receive() == b"ping"
    await server.send(memoryview(b"pong"))
    assert await client.receive() == b"pong"
    await client.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await server.receive()
    await server.send(b"still open this way")  # a half-close leaves the other direction
    assert await client.receive() == b"still open this way"


async def test_a_send_larger_than_the_kernel_takes_arrives_whole_and_in_order(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, client = pair
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB: many partial writes
    received = bytearray()

    async def slow_reader() -> None:
        while len(received) < len(payload):
            received.extend(await client.receive(7919))
            if len(received) % 13 == 0:
                await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_reader)
        await server.send(payload)
    assert received == payload


async def test_closing_wakes_a_reader_that_waits(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, _ = pair
    caught: list[BaseException] = []

    async def reader() -> None:
        try:
            await server.receive()
        except BaseException as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.05)
        await server.aclose()
    assert len(caught) == 1 and isinstance(caught[0], anyio.ClosedResourceError)
    with pytest.raises(anyio.ClosedResourceError):
        await server.send(b"x")


async def test_a_cancelled_receive_loses_nothing(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, client = pair
    with anyio.move_on_after(0.05) as scope:
        await server.receive()
    assert scope.cancelled_caught
    await client.send(b"after the cancel")
    assert await server.receive() == b"after the cancel"


async def test_two_readers_at_once_are_refused(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, client = pair
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.receive)
        await anyio.sleep(0.05)
        with pytest.raises(anyio.BusyResourceError):
            await server.receive()
        await client.send(b"x")  # lets the first reader finish


async def test_a_peer_that_resets_breaks_the_stream(
    pair: tuple[SocketByteStream, SocketByteStream],
) -> None:
    server, client = pair
    raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await client.aclose()  # linger 0: RST instead of FIN
    with pytest.raises(anyio.BrokenResourceError):
        await server.receive()


def test_listen_tcp_binds_a_free_port_on_the_address() -> None:
    listener = listen_tcp("127.0.0.1", 0)
    try:
        host, port = listener.getsockname()
        assert host == "127.0.0.1" and port > 0
    finally:
        listener.close()
