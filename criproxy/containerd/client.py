"""The one channel to containerd, shared by every service helper.

grpc.aio reconnects a channel by itself, so losing containerd only makes calls fail with
`Unavailable` until it is back; the reconnect backoff is kept short so that recovery is
noticed within about a second rather than grpc's default of up to two minutes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
import grpc.aio

from criproxy import metrics, tracing
from criproxy.containerd.errors import from_rpc_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable

_Req_contra = TypeVar("_Req_contra", contravariant=True)
_Resp_co = TypeVar("_Resp_co", covariant=True)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
DEFAULT_TIMEOUT = 30.0
_MAX_MESSAGE = 64 * 1024 * 1024

_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # containerd does not check the authority; a fixed one keeps the socket path out of it.
    ("grpc.default_authority", "localhost"),
]


class UnaryMethod(Protocol[_Req_contra, _Resp_co]):
    """A unary-unary stub method as grpc.aio generates it (the part criproxy uses)."""

    def __call__(
        self,
        request: _Req_contra,
        *,
        timeout: float | None = ...,
        metadata: tuple[tuple[str, str], ...] | None = ...,
    ) -> Awaitable[_Resp_co]: ...


class StreamMethod(Protocol[_Req_contra, _Resp_co]):
    """A unary-stream stub method as grpc.aio generates it."""

    def __call__(
        self,
        request: _Req_contra,
        *,
        timeout: float | None = ...,
        metadata: tuple[tuple[str, str], ...] | None = ...,
    ) -> AsyncIterable[_Resp_co]: ...


async def _cancellable(call: Awaitable[_Resp]) -> _Resp:
    """Await a grpc.aio call so that an anyio cancel scope can cancel it.

    Cancelled directly, a grpc.aio call raises a CancelledError of its own that anyio does
    not recognise as its cancellation, so it escapes the cancel scope (a `move_on_after`
    around a call would end the whole task). Run as a task behind a shield, the call is
    cancelled by us and the waiter gets anyio's own CancelledError.
    """
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


def _name(method: object) -> str:
    """The full rpc name of a grpc.aio multicallable (`/pkg.Service/Method`)."""
    name = getattr(method, "_method", b"")
    return name.decode() if isinstance(name, bytes) else str(name)


class Channel:
    """A grpc.aio channel to one containerd socket with the namespace header on every call."""

    def __init__(
        self, address: str, namespace: str, *, _parent: Channel | None = None, lease: str = ""
    ) -> None:
        self.address = address
        self.namespace = namespace
        self._owner = _parent is None
        self.grpc: grpc.aio.Channel = (
            _parent.grpc
            if _parent is not None
            else grpc.aio.insecure_channel(f"unix://{address}", options=_CHANNEL_OPTIONS)
        )
        self.lease = lease
        self._metadata: tuple[tuple[str, str], ...] = ((NAMESPACE_HEADER, namespace),)
        if lease:
            self._metadata += ((LEASE_HEADER, lease),)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def with_lease(self, lease: str) -> Channel:
        """The same connection, with every call made under `lease` (protected from GC)."""
        return Channel(self.address, self.namespace, _parent=self, lease=lease)

    async def unary(
        self,
        method: UnaryMethod[_Req, _Resp],
        request: _Req,
        *,
        operation: str,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> _Resp:
        """Call one unary rpc; a failure raises the project's error type for its code."""
        name = _name(method)
        started = time.monotonic()
        with tracing.client_span(name.lstrip("/"), **{"rpc.system": "grpc"}) as span:
            metadata = self._metadata if span is None else self._metadata + tracing.carrier()
            try:
                answer = await _cancellable(method(request, timeout=timeout, metadata=metadata))
            except grpc.aio.AioRpcError as err:
                metrics.observe_containerd(name, time.monotonic() - started, err.code().name)
                tracing.failed(span, err.details() or err.code().name)
                raise from_rpc_error(err.code(), err.details(), operation) from None
        metrics.observe_containerd(name, time.monotonic() - started, None)
        return answer

    async def stream(
        self,
        method: StreamMethod[_Req, _Resp],
        request: _Req,
        *,
        operation: str,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[_Resp]:
        """Iterate a server-streaming rpc; a failure raises the project's error type."""
        try:
            async for item in method(request, timeout=timeout, metadata=self._metadata):
                yield item
        except grpc.aio.AioRpcError as err:
            metrics.observe_containerd(_name(method), None, err.code().name)
            raise from_rpc_error(err.code(), err.details(), operation) from None

    async def close(self) -> None:
        if self._owner:
            await self.grpc.close()
