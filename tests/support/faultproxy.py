"""A TCP proxy in front of a real registry that misbehaves on blob downloads.

For the pull paths a well-behaved registry never takes: a download that stalls (the
progress timeout) or breaks off half-way (resuming from what was written), and, with
`ignore_range`, a registry that answers a range request with the whole blob. Everything
else passes through untouched.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["pass", "stall", "cut_once", "hold"]
_REQUEST = re.compile(rb"^(GET|HEAD) (\S+) HTTP/1\.[01]\r\n((?:.*?\r\n)*?)\r\n", re.S | re.M)
_RANGE = re.compile(rb"^range:\s*(.+?)\r$", re.I | re.M)
_RANGE_LINE = re.compile(rb"^range:[^\r\n]*\r\n", re.I | re.M)


@dataclass
class SeenRequest:
    method: str
    path: str
    range: str


@dataclass
class FaultProxy:
    upstream_port: int
    mode: Mode = "pass"
    after_bytes: int = 64 * 1024
    ignore_range: bool = False
    """Strip Range headers on the way up: the registry then sends every blob whole."""
    requests: list[SeenRequest] = field(default_factory=list)
    port: int = 0
    cuts: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    """hold: set once a download is held (after `after_bytes`), until `release`."""
    _release: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._release = asyncio.Event()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def release(self) -> None:
        """hold: let held downloads go on (and later ones pass)."""
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.call_soon(loop.stop)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    async def _misbehave(
        self,
        data: bytes,
        state: dict[str, Any],
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """A blob download's next chunk past `after_bytes`: held, stalled or cut. False
        when the connection is done."""
        room = self.after_bytes - state["sent"]
        if self.mode == "hold" and (room <= 0 or len(data) > room):
            assert self._release is not None
            self.held.set()
            await self._release.wait()
            state["blob"] = False  # the rest of this download passes
        elif room <= 0 or len(data) > room:
            writer.write(data[: max(room, 0)])
            await writer.drain()
            if self.mode == "stall":
                await asyncio.sleep(3600)
            self.cuts += 1
            self.mode = "pass"  # cut_once: only the first download breaks
            writer.transport.abort()
            up_writer.close()
            return False
        state["sent"] += len(data)
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        state: dict[str, Any] = {"blob": False, "sent": 0}
        buffer = b""

        async def client_to_upstream() -> None:
            nonlocal buffer
            while data := await reader.read(65536):
                buffer += data
                while (match := _REQUEST.search(buffer)) is not None:
                    method, path, headers = match.group(1), match.group(2), match.group(3)
                    ranged = _RANGE.search(headers + b"\r\n")
                    self.requests.append(
                        SeenRequest(
                            method.decode(),
                            path.decode(),
                            ranged.group(1).decode() if ranged else "",
                        )
                    )
                    state["blob"] = b"/blobs/" in path and method == b"GET"
                    state["sent"] = 0
                    buffer = buffer[match.end() :]
                if self.ignore_range:
                    data = _RANGE_LINE.sub(b"", data)
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def upstream_to_client() -> None:
            while data := await up_reader.read(16384):
                meddle = state["blob"] and self.mode != "pass"
                if meddle and not await self._misbehave(data, state, writer, up_writer):
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        tasks = [
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait(tasks, timeout=3600)
        except asyncio.CancelledError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            up_writer.close()
