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
from criproxy.errors import CriproxyError, DeadlineExceeded

if TYPE_CHECKING:
    from criproxy.streaming.spdy import SpdyConnection, SpdyStream

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
    try:
        code = await session(
            SessionStreams(
                stdin=_Input(streams["stdin"]) if "stdin" in streams else None,
                stdout=_Output(streams["stdout"]) if "stdout" in streams else None,
                stderr=_Output(streams["stderr"]) if "stderr" in streams else None,
                resize=_sizes(streams["resize"]) if "resize" in streams else None,
            )
        )
        status = _success() if code == 0 else _exit_failure(ExitCode(cmd, code))
    except CriproxyError as err:
        log.info("streaming session failed", error=err.message)
        status = _internal_error(f"error executing command in container: {err.message}")
    for name in ("stdout", "stderr"):
        if name in streams:
            await _quietly(streams[name].send_eof())
    await _quietly(_write_status(error, protocol, status))


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


class _Input:
    def __init__(self, stream: SpdyStream) -> None:
        self._stream = stream

    async def receive(self) -> bytes:
        return await self._stream.receive()


class _Output:
    def __init__(self, stream: SpdyStream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)


async def _sizes(stream: SpdyStream) -> AsyncIterator[TerminalSize]:
    """The terminal sizes the client sends: JSON objects `{"Width": w, "Height": h}`, one
    after another on the stream."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        try:
            chunk = await stream.receive()
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


async def _write_status(stream: SpdyStream, protocol: str, status: dict[str, Any]) -> None:
    if _version(protocol) >= 4:
        await stream.send(json.dumps(status, separators=(",", ":")).encode())
    elif status["status"] != "Success":
        await stream.send(str(status["message"]).encode())
    await stream.send_eof()


async def _quietly(step: Awaitable[None]) -> None:
    """A write to a client that may have gone already."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await step
