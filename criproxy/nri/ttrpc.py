"""ttrpc, the small RPC protocol NRI speaks (unary calls only, which is all NRI uses).

A message is a 10-byte header (payload length uint32, stream id uint32, both big-endian;
type uint8; flags uint8) and a protobuf payload of at most 4 MiB. A call is a Request
message (type 1) on a new odd stream id, increasing; its answer a Response (type 2) on the
same id, whose `google.rpc.Status` says whether it failed. One side of a connection calls,
the other serves: NRI gives each direction a connection of its own (see mux.py).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import grpc
import structlog

from criproxy._generated.google.rpc import status_pb2
from criproxy._generated.ttrpc import request_pb2

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from google.protobuf.message import Message

log = structlog.get_logger("criproxy.nri")

HEADER = struct.Struct(">IIBB")
REQUEST = 0x1
RESPONSE = 0x2
MAX_MESSAGE = 4 << 20

M = TypeVar("M", bound="Message")


class Stream(Protocol):
    async def read_exactly(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class TtrpcError(Exception):
    """A call's failure: a gRPC status code and its message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Closed(Exception):
    """The connection went before the answer came."""


_CODES = {c.value[0]: c for c in grpc.StatusCode}


async def read_message(stream: Stream) -> tuple[int, int, bytes]:
    """The next message: stream id, type, payload."""
    length, stream_id, kind, _flags = HEADER.unpack(await stream.read_exactly(HEADER.size))
    if length > MAX_MESSAGE:
        raise Closed(f"a message of {length} bytes, over ttrpc's {MAX_MESSAGE}")
    return stream_id, kind, await stream.read_exactly(length) if length else b""


async def write_message(stream: Stream, stream_id: int, kind: int, payload: bytes) -> None:
    await stream.write(HEADER.pack(len(payload), stream_id, kind, 0) + payload)


@dataclass
class _Pending:
    done: anyio.Event
    answer: bytes | None = None


class Client:
    """Calls over one connection; `run` reads the answers."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._ids = itertools.count(1, 2)
        self._pending: dict[int, _Pending] = {}
        self._closed = False

    async def run(self) -> None:
        try:
            while True:
                stream_id, kind, payload = await read_message(self._stream)
                pending = self._pending.get(stream_id)
                if kind == RESPONSE and pending is not None:
                    pending.answer = payload
                    pending.done.set()
        except Exception:  # any failure of the connection ends every call
            pass
        finally:
            self._closed = True
            for pending in self._pending.values():
                pending.done.set()

    async def call(
        self, service: str, method: str, request: Message, reply: type[M], timeout: float
    ) -> M:
        """One unary call; TtrpcError for a failed one (DEADLINE_EXCEEDED past `timeout`),
        Closed when the connection goes first."""
        if self._closed:
            raise Closed("the connection is closed")
        stream_id = next(self._ids)
        pending = self._pending[stream_id] = _Pending(anyio.Event())
        message = request_pb2.Request(
            service=service,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(timeout * 1e9),
        )
        try:
            await write_message(self._stream, stream_id, REQUEST, message.SerializeToString())
            with anyio.move_on_after(timeout):
                await pending.done.wait()
        except Exception as err:  # the connection failed under the write
            raise Closed(f"{service}.{method}: {err}") from None
        finally:
            del self._pending[stream_id]
        if pending.answer is None:
            if self._closed:
                raise Closed(f"{service}.{method}: the connection closed before the answer")
            raise TtrpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{service}.{method}: no answer in {timeout:g}s"
            )
        response = request_pb2.Response.FromString(pending.answer)
        if response.status.code:
            code = _CODES.get(response.status.code, grpc.StatusCode.UNKNOWN)
            raise TtrpcError(code, response.status.message)
        return reply.FromString(response.payload)


class Server:
    """Serves the calls that come over one connection, each in a task of its own."""

    def __init__(
        self, stream: Stream, methods: Mapping[tuple[str, str], Callable[[bytes], Awaitable[bytes]]]
    ) -> None:
        self._stream = stream
        self._methods = methods
        self._write = anyio.Lock()

    async def run(self) -> None:
        last = 0
        async with anyio.create_task_group() as tg:
            try:
                while True:
                    stream_id, kind, payload = await read_message(self._stream)
                    if kind != REQUEST:
                        continue
                    if stream_id <= last or not stream_id % 2:
                        return  # ttrpc's rule: odd, increasing ids from the caller
                    last = stream_id
                    tg.start_soon(self._serve, stream_id, payload)
            except Exception:  # the connection went
                pass
            finally:
                tg.cancel_scope.cancel()

    async def _serve(self, stream_id: int, payload: bytes) -> None:
        response = request_pb2.Response()
        try:
            request = request_pb2.Request.FromString(payload)
            handler = self._methods.get((request.service, request.method))
            if handler is None:
                raise TtrpcError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"method {request.service}.{request.method} not implemented",
                )
            response.payload = await handler(request.payload)
        except TtrpcError as err:
            response.status.CopyFrom(status_pb2.Status(code=err.code.value[0], message=err.message))
        except Exception as err:  # the caller gets the failure, not a hang
            log.warning("NRI call failed", error=repr(err))
            response.status.CopyFrom(
                status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=str(err))
            )
        async with self._write:
            try:
                await write_message(self._stream, stream_id, RESPONSE, response.SerializeToString())
            except Exception:  # the connection went: nobody to answer
                return
