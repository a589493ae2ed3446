"""Kubernetes' remote command protocol (exec, attach) over SPDY streams: which streams a
session expects, how long the client gets to open them, and how the result is reported on
the error stream in each protocol version.

The client opens one stream per role, told apart by its `streamType` header: `error`
always, `stdin`, `stdout`, `stderr` as asked, `resize` with a tty (v3 and later). v4 (and
v5, which criproxy speaks as v4 over SPDY) reports the end as a JSON `metav1.Status`;
earlier versions write an error's text only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy.containers.streams import SessionStreams, TerminalSize
from criproxy.errors import CriproxyError, DeadlineExceeded, unwrap
from criproxy.streaming.gone import quietly

if TYPE_CHECKING:
    from criproxy.streaming.spdy import SpdyConnection, SpdyStream
    from criproxy.streaming.websocket import ChannelConnection

log = structlog.get_logger("criproxy.streaming")

PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
"""What criproxy accepts over SPDY, in its order of preference when a client offers several."""
STREAM_CREATION_TIMEOUT = 30.0
_STREAM_TYPE = "streamtype"
_MAX_RESIZE_MESSAGE = 4096

Session = Callable[[SessionStreams], Awaitable[int]]
"""Runs the exec or attach over the streams; the exit code (0 for attach)."""


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    def expected(self, protocol: str) -> set[str]:
        wanted = {"error"}
        wanted |= {"stdin"} if self.stdin else set()
        wanted |= {"stdout"} if self.stdout else set()
        wanted |= {"stderr"} if self.stderr and not self.tty else set()
        if self.tty and _version(protocol) >= 3:
            wanted.add("resize")
        return wanted


class ExitCode(Exception):
    """A command that ended with a non-zero exit code."""

    def __init__(self, cmd: tuple[str, ...], code: int) -> None:
        super().__init__(f"error executing command [{' '.join(cmd)}], exit code {code}")
        self.code = code


def _version(protocol: str) -> int:
    if protocol.startswith("v") and "." in protocol:
        return int(protocol[1 : protocol.index(".")])
    return 1


async def serve(
    conn: SpdyConnection,
    protocol: str,
    options: StreamOptions,
    session: Session,
    cmd: tuple[str, ...] = (),
) -> None:
    """Collect the client's streams, run the session over them, report how it ended."""
    streams = await _collect(conn, protocol, options)
    error = streams.pop("error")
    status = await run_session(
        session,
        SessionStreams(
            stdin=streams.get("stdin"),
            stdout=streams.get("stdout"),
            stderr=streams.get("stderr"),
            resize=sizes(streams["resize"].receive) if "resize" in streams else None,
        ),
        cmd,
    )
    for name in ("stdout", "stderr"):
        if name in streams:
            await quietly(streams[name].send_eof())
    await quietly(error.send(status_message(protocol, status)))
    await quietly(error.send_eof())


async def _collect(
    conn: SpdyConnection, protocol: str, options: StreamOptions
) -> dict[str, SpdyStream]:
    """Every stream the session needs, replied to, within STREAM_CREATION_TIMEOUT."""
    wanted = options.expected(protocol)
    streams: dict[str, SpdyStream] = {}
    with anyio.move_on_after(STREAM_CREATION_TIMEOUT):
        while wanted - streams.keys():
            stream = await conn.accept()
            kind = stream.headers.get(_STREAM_TYPE, "")
            await stream.reply()
            if kind not in wanted or kind in streams:
                await stream.reset()
                continue
            streams[kind] = stream
    missing = wanted - streams.keys()
    if missing:
        raise DeadlineExceeded(
            f"timed out waiting for the client to create streams {sorted(missing)}"
        )
    return streams


async def sizes(receive: Callable[[], Awaitable[bytes]]) -> AsyncIterator[TerminalSize]:
    """The terminal sizes the client sends: JSON objects `{"Width": w, "Height": h}`, one
    after another on the resize stream (or channel)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        try:
            chunk = await receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        buffer += chunk.decode("utf-8", "replace")
        while buffer.strip():
            try:
                value, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                if len(buffer) > _MAX_RESIZE_MESSAGE:
                    return  # not a size; stop listening for resizes
                break
            buffer = buffer.lstrip()[end:]
            if isinstance(value, dict):
                width, height = value.get("Width"), value.get("Height")
                if isinstance(width, int) and isinstance(height, int) and width > 0 < height:
                    yield TerminalSize(width, height)


async def run_session(
    session: Session, streams: SessionStreams, cmd: tuple[str, ...]
) -> dict[str, Any]:
    """Run the session; how it ended, as the error stream reports it. A session that could
    not run (a failure inside its task groups too) is a Failure status, not a lost
    connection."""
    try:
        return final_status(await session(streams), cmd)
    except Exception as exc:
        leaf = unwrap(exc)
        if isinstance(leaf, CriproxyError):
            return failure_status(leaf)
        raise


def final_status(code: int, cmd: tuple[str, ...]) -> dict[str, Any]:
    """How a session that ran to its end is reported."""
    return _success() if code == 0 else _exit_failure(ExitCode(cmd, code))


def failure_status(err: CriproxyError) -> dict[str, Any]:
    """How a session that could not run is reported."""
    log.info("streaming session failed", error=err.message)
    return _internal_error(f"error executing command in container: {err.message}")


def status_message(protocol: str, status: dict[str, Any]) -> bytes:
    """The error stream's content: v4 and later a JSON Status, before only a failure's text."""
    if _version(protocol) >= 4:
        return json.dumps(status, separators=(",", ":")).encode()
    if status["status"] != "Success":
        return str(status["message"]).encode()
    return b""


def _success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def _exit_failure(err: ExitCode) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {err}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(err.code)}]},
    }


def _internal_error(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


# --- over WebSocket channels ---------------------------------------------------------------

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
_CHANNEL_QUEUE = 16


async def serve_channels(
    conn: ChannelConnection, options: StreamOptions, session: Session, cmd: tuple[str, ...] = ()
) -> None:
    """The same session over the channel protocols: 0 stdin, 1 stdout, 2 stderr, 3 error,
    4 resize. v5's close signal on channel 0 is the end of stdin."""
    protocol = conn.protocol
    # As the kubelet: an empty message on the lowest channel the client reads, "connected".
    first = STDOUT if options.stdout else STDERR if options.stderr else ERROR
    await conn.send(first, b"")
    stdin = _ChannelInput() if options.stdin else None
    resize = _ChannelInput() if options.tty else None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_dispatch, conn, {STDIN: stdin, RESIZE: resize})
        status = await run_session(
            session,
            SessionStreams(
                stdin=stdin,
                stdout=_ChannelOutput(conn, STDOUT) if options.stdout else None,
                stderr=_ChannelOutput(conn, STDERR) if options.stderr and not options.tty else None,
                resize=sizes(resize.receive) if resize is not None else None,
            ),
            cmd,
        )
        message = status_message(protocol, status)
        if message:
            await quietly(conn.send(ERROR, message))
        tg.cancel_scope.cancel()
    await quietly(conn.close())


class _ChannelInput:
    """A channel's messages from the client, bounded: a reader that does not keep up holds
    the dispatcher, and so the WebSocket, back."""

    def __init__(self) -> None:
        self.send, self._receive = anyio.create_memory_object_stream[bytes](_CHANNEL_QUEUE)

    async def receive(self) -> bytes:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise anyio.EndOfStream from None


class _ChannelOutput:
    def __init__(self, conn: ChannelConnection, channel: int) -> None:
        self._conn = conn
        self._channel = channel

    async def send(self, data: bytes) -> None:
        await self._conn.send(self._channel, data)


async def _dispatch(conn: ChannelConnection, inputs: dict[int, _ChannelInput | None]) -> None:
    """Route the client's messages to their channels until it goes; the end of the
    connection (or v5's close signal) ends each input."""
    try:
        while True:
            channel, data = await conn.receive()
            target = inputs.get(channel)
            if target is None:
                continue
            if data is None:
                target.send.close()
                inputs[channel] = None
            else:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    await target.send.send(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        for target in inputs.values():
            if target is not None:
                target.send.close()
