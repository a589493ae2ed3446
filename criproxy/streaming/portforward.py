"""Kubernetes' port-forward protocol (`portforward.k8s.io`) over SPDY.

For every connection it forwards, the client opens two streams with the same `requestID`
and `port` headers: `streamType: data` carries the bytes, `streamType: error` an error
message should the forward fail. Each pair becomes one TCP connection to the port inside
the pod; the SPDY connection carries as many as the client opens, concurrently.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from criproxy.errors import CriproxyError
from criproxy.streaming.gone import CLIENT_GONE, quietly
from criproxy.streaming.websocket import announce_ports, port_channels

if TYPE_CHECKING:
    from criproxy.streaming.spdy import SpdyConnection, SpdyStream
    from criproxy.streaming.websocket import ChannelConnection

log = structlog.get_logger("criproxy.streaming")

PROTOCOL = "portforward.k8s.io"
PAIR_TIMEOUT = 30.0
"""How long the second stream of a pair may take (the stream creation timeout)."""
CLOSE_GRACE = 1.0
"""After one direction ends, how long the other may still flow (as containerd)."""
_CHUNK = 256 * 1024

Dial = Callable[[int], Awaitable[anyio.abc.ByteStream]]


@dataclass
class _Pair:
    port_header: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    complete: anyio.Event = field(default_factory=anyio.Event)


async def serve(conn: SpdyConnection, dial: Dial, pod: str) -> None:
    """Serve every stream pair the client opens until the connection ends."""
    pairs: dict[str, _Pair] = {}
    async with anyio.create_task_group() as tg:
        while True:
            try:
                stream = await conn.accept()
            except anyio.EndOfStream:
                break
            await stream.reply()
            kind = stream.headers.get("streamtype", "")
            request_id = stream.headers.get("requestid", "") or _legacy_id(stream, kind)
            if kind not in ("data", "error"):
                await stream.reset()
                continue
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _Pair(stream.headers.get("port", ""))
                tg.start_soon(_forward_when_paired, pairs, request_id, pair, dial, pod)
            if getattr(pair, kind) is not None:
                await stream.reset()  # a second stream of the same kind: a protocol error
                continue
            setattr(pair, kind, stream)
            if pair.data is not None and pair.error is not None:
                pair.complete.set()
        tg.cancel_scope.cancel()


def _legacy_id(stream: SpdyStream, kind: str) -> str:
    """Clients before requestID paired an error stream with the data stream after it."""
    return str(stream.id if kind == "error" else stream.id - 2)


async def _forward_when_paired(
    pairs: dict[str, _Pair], request_id: str, pair: _Pair, dial: Dial, pod: str
) -> None:
    try:
        with anyio.move_on_after(PAIR_TIMEOUT):
            await pair.complete.wait()
        if pair.data is None or pair.error is None:
            for stream in (pair.data, pair.error):
                if stream is not None:
                    await quietly(stream.reset())
            return
        await _forward(pair.data, pair.error, pair.port_header, dial, pod)
    finally:
        pairs.pop(request_id, None)


async def _forward(
    data: SpdyStream, error: SpdyStream, port_header: str, dial: Dial, pod: str
) -> None:
    try:
        port = int(port_header)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        await _report(error, f"invalid port {port_header!r}")
        await quietly(data.reset())
        return
    try:
        target = await dial(port)
    except CriproxyError as err:
        await _report(error, f"error forwarding port {port} to pod {pod}: {err.message}")
        await quietly(data.reset())
        return
    async with target:
        await _pipe(functools.partial(data.receive, _CHUNK), data.send, target)
    await quietly(data.send_eof())
    await quietly(error.send_eof())


async def _pipe(
    receive: Callable[[], Awaitable[bytes]],
    send: Callable[[bytes], Awaitable[None]],
    target: anyio.abc.ByteStream,
) -> None:
    """Both directions between the client (`receive`, `send`) and the pod's connection,
    until one ends, then at most CLOSE_GRACE for the other (as containerd)."""
    scopes = (anyio.CancelScope(), anyio.CancelScope())

    def done(i: int) -> None:
        other = scopes[1 - i]
        other.deadline = min(other.deadline, anyio.current_time() + CLOSE_GRACE)

    async def to_pod() -> None:
        with scopes[0], contextlib.suppress(*CLIENT_GONE):
            while True:
                await target.send(await receive())
        with contextlib.suppress(*CLIENT_GONE):
            await target.send_eof()  # the client is done sending: half-close to the pod
        done(0)

    async def to_client() -> None:
        with scopes[1], contextlib.suppress(*CLIENT_GONE):
            while True:
                await send(await target.receive(_CHUNK))
        done(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(to_pod)
        tg.start_soon(to_client)


async def _report(error: SpdyStream, message: str) -> None:
    log.info("port forward failed", error=message)
    await quietly(error.send(message.encode()))
    await quietly(error.send_eof())


# --- over WebSocket channels ---------------------------------------------------------------


async def serve_channels(conn: ChannelConnection, ports: tuple[int, ...], dial: Dial) -> None:
    """Port-forward over the channel protocols: the ports come with the request (its
    `port` query parameters); port i's data is channel 2i, its errors channel 2i+1, and
    each channel starts with the port number (2 bytes, little-endian). Each port is
    dialled before it is announced, so the client's first bytes find the pod's end ready."""
    targets: list[anyio.abc.ByteStream | str] = []
    for port in ports:
        try:
            targets.append(await dial(port))
        except CriproxyError as err:
            targets.append(f"error forwarding port {port}: {err.message}")
    try:
        await announce_ports(conn, ports)
        inputs = [_ChannelBytes() for _ in ports]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_dispatch, conn, inputs)
            async with anyio.create_task_group() as forwards:
                for index, target in enumerate(targets):
                    forwards.start_soon(_forward_channel, conn, index, target, inputs[index])
            tg.cancel_scope.cancel()
    finally:
        for target in targets:
            if not isinstance(target, str):
                await quietly(target.aclose())
    await quietly(conn.close())


class _ChannelBytes:
    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[bytes](16)


async def _dispatch(conn: ChannelConnection, inputs: list[_ChannelBytes]) -> None:
    try:
        while True:
            channel, data = await conn.receive()
            index, is_error = divmod(channel, 2)
            if is_error or index >= len(inputs) or not data:
                continue
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await inputs[index].send.send(data)
    except CLIENT_GONE:
        pass
    finally:
        for target in inputs:
            target.send.close()


async def _forward_channel(
    conn: ChannelConnection,
    index: int,
    target: anyio.abc.ByteStream | str,
    data_in: _ChannelBytes,
) -> None:
    """One port's connection: its data both ways, or the error that kept it from being
    made (on the port's error channel)."""
    data_channel, error_channel = port_channels(index)
    if isinstance(target, str):
        log.info("port forward failed", error=target)
        await quietly(conn.send(error_channel, target.encode()))
        return
    await _pipe(data_in.receive.receive, functools.partial(conn.send, data_channel), target)
