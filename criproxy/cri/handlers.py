"""Turns the servicer classes into gRPC method handlers for every rpc of a CRI service.

Every call passes through here once: the request is decoded here (not by grpc, which
would answer UNKNOWN for bytes that are not the message), domain errors become gRPC
statuses (never a traceback), and each call is logged and measured with its method,
duration and status code. An rpc the servicer does not define answers UNIMPLEMENTED
naming the rpc.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import structlog
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from criproxy import errors, metrics, tracing
from criproxy.cri.errors import status_code

if TYPE_CHECKING:
    from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
    from google.protobuf.message import Message

log = structlog.get_logger("criproxy.cri")

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


def _reads_only(method: str) -> bool:
    """The polling calls (the kubelet's relists, status and stats): their successes are
    logged at debug, as containerd logs them, so a node's log is its changes."""
    return (
        method.startswith(("List", "Stream"))
        or method.endswith(("Status", "Stats"))
        or (method in ("Version", "RuntimeConfig", "ImageFsInfo"))
    )


class _Call:
    """Bookkeeping for one call: its outcome decides the status code logged and counted."""

    def __init__(self, method: str, *, quiet: bool) -> None:
        self.method = method
        self.quiet = quiet
        """A polling rpc: a success is logged at debug (decided once per rpc, not per call)."""
        self.started = time.monotonic()
        self.code = grpc.StatusCode.OK
        self.error = ""
        self.finished = False

    async def fail(self, context: Context, exc: Exception) -> None:
        leaf = errors.unwrap(exc)
        if isinstance(leaf, errors.CriproxyError):
            self.code, self.error = status_code(leaf), leaf.message
        else:
            self.code = grpc.StatusCode.INTERNAL
            self.error = f"internal error in {self.method}: {type(exc).__name__}: {exc}"
            log.error("unexpected error", method=self.method, exc_info=exc)
        # Counted before the status leaves: a client that saw the error and then reads
        # /metrics finds it counted.
        self.finish()
        await context.abort(self.code, self.error)

    def aborted(self, context: Context) -> None:
        code = context.code()
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        seconds = time.monotonic() - self.started
        metrics.observe_call(self.method, self.code.name, seconds)
        fields: dict[str, Any] = {
            "method": self.method,
            "duration_ms": round(seconds * 1000, 3),
            "code": self.code.name,
        }
        if self.error:
            fields["error"] = self.error
        if self.quiet and self.code is grpc.StatusCode.OK:
            log.debug("cri call", **fields)
        else:
            log.info("cri call", **fields)


def _decode(request_cls: type[Message], raw: bytes) -> Message:
    try:
        return request_cls.FromString(raw)
    except DecodeError as err:
        name = request_cls.DESCRIPTOR.full_name
        raise errors.InvalidArgument(f"cannot decode the request as {name}: {err}") from None


def _unary(method: str, request_cls: type[Message], inner: UnaryBehavior) -> UnaryBehavior:
    quiet = _reads_only(method)

    async def answer(raw: bytes, context: Context, span: Any = None) -> Any:
        call = _Call(method, quiet=quiet)
        try:
            return await inner(_decode(request_cls, raw), context)
        except grpc.aio.AbortError:
            call.aborted(context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", call.code.value[0])
                if call.code is not grpc.StatusCode.OK:
                    tracing.failed(span, call.error or call.code.name)

    async def behavior(raw: bytes, context: Context) -> Any:
        if not tracing.enabled():
            return await answer(raw, context)
        # in a server span, continuing the kubelet's trace when it sent one
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        with tracing.server_span(method, metadata) as span:
            return await answer(raw, context, span)

    return behavior


def _stream(method: str, request_cls: type[Message], inner: StreamBehavior) -> StreamBehavior:
    quiet = _reads_only(method)

    async def behavior(raw: bytes, context: Context) -> AsyncIterator[Any]:
        call = _Call(method, quiet=quiet)
        try:
            async for item in inner(_decode(request_cls, raw), context):
                yield item
        except grpc.aio.AbortError:
            call.aborted(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()

    return behavior


def _unimplemented(service: ServiceDescriptor, method: MethodDescriptor) -> Any:
    text = f"{service.full_name}/{method.name} is not implemented by criproxy yet"
    if method.server_streaming:

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            raise errors.Unimplemented(text)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: Context) -> Any:
        raise errors.Unimplemented(text)

    return unary


def _serialize(response_cls: type[Message], response: Message | bytes) -> bytes:
    """A response message's bytes; a behaviour that encoded its response itself (a list
    assembled from cached encodings) returns the bytes."""
    if isinstance(response, bytes):
        return response
    assert isinstance(response, response_cls), f"{type(response).__name__} for {response_cls}"
    return response.SerializeToString()


def service_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """Handlers for every rpc of `service`: the servicer's method of that name, or UNIMPLEMENTED.

    Client-streaming rpcs do not exist in CRI v1, so only unary and server-streaming are built.
    grpc hands the behaviours the raw request bytes (no deserializer): they decode them; a
    behaviour may answer with the response already encoded.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        assert not method.client_streaming, f"{method.full_name} is client-streaming"
        implementation = getattr(servicer, method.name, None) or _unimplemented(service, method)
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        factory = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        wrap = _stream if method.server_streaming else _unary
        handlers[method.name] = factory(
            wrap(method.name, request_cls, implementation),
            request_deserializer=None,
            response_serializer=functools.partial(_serialize, response_cls),
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
