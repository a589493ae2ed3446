"""What an exec or attach session reads and writes, whatever carries it (SPDY streams,
WebSocket channels): the protocol layer adapts its streams to these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class InputStream(Protocol):
    async def receive(self) -> bytes:
        """The next bytes from the client; anyio.EndOfStream at its end of input."""
        ...


class OutputStream(Protocol):
    async def send(self, data: bytes) -> None:
        """To the client; waits while the client is not reading (back-pressure)."""
        ...


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


@dataclass
class SessionStreams:
    stdin: InputStream | None = None
    stdout: OutputStream | None = None
    stderr: OutputStream | None = None
    resize: AsyncIterator[TerminalSize] | None = None


@dataclass(frozen=True)
class ExecRequest:
    """A CRI ExecRequest, validated: what its token stands for."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()
