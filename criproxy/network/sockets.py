"""TCP byte streams for bulk traffic: the streaming server's client connections and
port-forward's connections into pods.

anyio's asyncio sockets go through asyncio transports: every receive that finds nothing
queued re-arms the selector and disarms it after, and a send the kernel cannot take whole is
copied into a bytearray that is shifted down after every partial write. At hundreds of MB/s
through one Python thread that is most of the cost. These streams call the socket first
and wait on the selector only when it would block; a partial send goes on from a
memoryview of what is left, so nothing is copied in user space.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_GONE = (ConnectionError, TimeoutError)


class SocketByteStream(anyio.abc.ByteStream):
    """A connected TCP socket as an anyio byte stream (one reader and one writer may run
    concurrently). Every call is a checkpoint, as with anyio's own streams, taken before
    the socket is touched: once bytes are read or written, nothing can cancel the call and
    lose them."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._closed = False
        self._receiving = False
        self._sending = False

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            anyio.abc.SocketAttribute.raw_socket: lambda: self._sock,
            anyio.abc.SocketAttribute.local_address: self._sock.getsockname,
            anyio.abc.SocketAttribute.remote_address: self._sock.getpeername,
        }

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        self._receiving = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                self._check_open()
                try:
                    data = self._sock.recv(max_bytes)
                except BlockingIOError:
                    await self._wait(anyio.wait_readable)
                    continue
                except _GONE as exc:
                    raise anyio.BrokenResourceError(str(exc)) from exc
                if not data:
                    raise anyio.EndOfStream
                return data
        finally:
            self._receiving = False

    async def send(self, item: bytes | memoryview) -> None:
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint()
            with memoryview(item) as whole:
                view = whole.cast("B")
                while view:
                    self._check_open()
                    try:
                        sent = self._sock.send(view)
                    except BlockingIOError:
                        await self._wait(anyio.wait_writable)
                        continue
                    except (*_GONE, BrokenPipeError) as exc:
                        raise anyio.BrokenResourceError(str(exc)) from exc
                    view = view[sent:]
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._check_open()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    async def _wait(self, wait: Callable[[socket.socket], Any]) -> None:
        try:
            await wait(self._sock)
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except OSError as exc:  # the socket was closed under us
            if exc.errno == errno.EBADF:
                raise anyio.ClosedResourceError from None
            raise


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening socket on the first address `host` resolves to (port 0: a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept(listener: socket.socket) -> SocketByteStream:
    """The next connection on a listening socket."""
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            await anyio.wait_readable(listener)
            continue
        return SocketByteStream(conn)
