"""NRI's multiplexer: several byte streams over one socket between a runtime and a plugin.

Every frame is an 8-byte header (the connection id, then the payload's length, both
big-endian uint32) and the payload. NRI uses two connections: 1 carries the Plugin
service (the plugin serves, the runtime calls), 2 the Runtime service (the runtime serves
RegisterPlugin and UpdateContainers). Opening a connection sends nothing; frames for a
connection nobody opened are dropped, as NRI's own multiplexer does.

A Go peer hands each frame to its ttrpc reader whole, into a 4 KiB read buffer at worst,
so frames written here carry at most 4 KiB.
"""

from __future__ import annotations

import contextlib
import struct
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from anyio.abc import ByteStream
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2
HEADER = struct.Struct(">II")
MAX_WRITE = 4096
"""The most one frame carries: what a Go peer's ttrpc reader takes in one read."""
MAX_FRAME = 10 + (4 << 20)
"""The most a frame may claim to carry (a whole ttrpc message): more is a broken peer."""
_QUEUE = 256


class MuxClosed(Exception):
    """The socket went, or the multiplexer was closed."""


class Conn:
    """One logical connection: a byte stream over the multiplexer."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self._mux = mux
        self.id = conn_id
        self._send: MemoryObjectSendStream[bytes]
        self._receive: MemoryObjectReceiveStream[bytes]
        self._send, self._receive = anyio.create_memory_object_stream[bytes](_QUEUE)
        self._buffer = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                self._buffer += await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise MuxClosed(f"connection {self.id} closed") from None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def write(self, data: bytes) -> None:
        await self._mux.write(self.id, data)

    def _deliver(self, payload: bytes) -> bool:
        try:
            self._send.send_nowait(payload)
        except anyio.WouldBlock:
            return False  # a reader that fell this far behind: the peer is broken
        except anyio.BrokenResourceError:
            pass
        return True

    def _close(self) -> None:
        self._send.close()


class Mux:
    def __init__(self, trunk: ByteStream) -> None:
        self._trunk = trunk
        self._conns: dict[int, Conn] = {}
        self._write_lock = anyio.Lock()
        self._buffer = bytearray()
        self._scope: anyio.CancelScope | None = None
        self.closed = False
        self.done = anyio.Event()
        """Set once the multiplexer is closed (by either side)."""

    def open(self, conn_id: int) -> Conn:
        if conn_id == 0:
            raise ValueError("connection id 0 is reserved")
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = self._conns[conn_id] = Conn(self, conn_id)
        return conn

    async def write(self, conn_id: int, data: bytes) -> None:
        if self.closed:
            raise MuxClosed("the multiplexer is closed")
        view = memoryview(data)
        async with self._write_lock:
            try:
                while True:
                    chunk = view[:MAX_WRITE]
                    await self._trunk.send(HEADER.pack(conn_id, len(chunk)) + bytes(chunk))
                    view = view[MAX_WRITE:]
                    if not view:
                        return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
                await self.aclose()
                raise MuxClosed(f"writing to the socket failed: {err}") from None

    async def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += await self._trunk.receive()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def run(self) -> None:
        """Read frames and hand them to their connections until the socket goes or the
        multiplexer is closed (which cancels this read: a socket closed under a pending
        read upsets asyncio)."""
        try:
            with anyio.CancelScope() as self._scope:
                while True:
                    conn_id, length = HEADER.unpack(await self._read(HEADER.size))
                    if length > MAX_FRAME:
                        break  # not a peer speaking this protocol
                    payload = await self._read(length) if length else b""
                    conn = self._conns.get(conn_id)
                    if conn is not None and payload and not conn._deliver(payload):
                        break
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:  # also when a task group around it is cancelled: the socket goes with it
            self._scope = None
            self._close_conns()
            await self._close_trunk()

    async def aclose(self) -> None:
        self._close_conns()
        if self._scope is not None:
            self._scope.cancel()  # run() closes the socket once its read is cancelled
        else:
            await self._close_trunk()

    def _close_conns(self) -> None:
        if not self.closed:
            self.closed = True
            self.done.set()
            for conn in self._conns.values():
                conn._close()

    async def _close_trunk(self) -> None:
        with (
            anyio.CancelScope(shield=True),
            contextlib.suppress(OSError, anyio.BrokenResourceError),
        ):
            await self._trunk.aclose()
