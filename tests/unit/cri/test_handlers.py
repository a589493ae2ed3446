"""Every CRI call through service_handler: decoding, errors to statuses, log and metrics.

The first half drives the method handlers directly with a stand-in context; the second
serves the real servicers over a unix socket and sends them raw bytes, as a fuzzer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import prometheus_client
import pytest
import structlog.testing
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from criproxy import errors
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri import ImageServicer, RuntimeServicer, service_handler

pytestmark = pytest.mark.anyio

RUNTIME = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
NOT_A_MESSAGE = b"\xff\xff\xff"
"""Field 31 with wire type 7: no message decodes from it."""


@dataclass(frozen=True)
class _Details:
    method: str


class FakeContext:
    """What the handlers use of grpc.aio.ServicerContext: abort and the code it set."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.status, self.details = code, details
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return self.status


class RecordingServicer:
    """Answers Version and GetContainerEvents, and fails in the ways the tests choose."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def Version(self, request: api_pb2.VersionRequest, context: Any) -> Any:
        self.requests.append(request)
        return api_pb2.VersionResponse(version=request.version)

    async def GetContainerEvents(
        self, request: api_pb2.GetEventsRequest, context: Any
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        self.requests.append(request)
        yield api_pb2.ContainerEventResponse(container_id="c1")

    async def StopContainer(self, request: api_pb2.StopContainerRequest, context: Any) -> Any:
        raise errors.NotFound(f"container {request.container_id!r} not found")

    async def StartContainer(self, request: api_pb2.StartContainerRequest, context: Any) -> Any:
        raise RuntimeError("boom")

    async def RemoveContainer(self, request: api_pb2.RemoveContainerRequest, context: Any) -> Any:
        # as a task group raises it: the domain error that matters sits inside the group
        raise ExceptionGroup(
            "undo", [RuntimeError("undo failed"), errors.FailedPrecondition("busy")]
        )


class EndingServicer:
    """A unary and a streaming rpc that end as `outcome` says: an abort of their own or a
    cancellation."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    async def _end(self, context: Any) -> None:
        if self.outcome == "abort":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many")
        raise asyncio.CancelledError

    async def ExecSync(self, request: Any, context: Any) -> Any:
        await self._end(context)

    async def GetContainerEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield api_pb2.ContainerEventResponse(container_id="c1")
        await self._end(context)


def _handler(servicer: object, name: str, service: Any = RUNTIME) -> Any:
    generic = service_handler(service, servicer)
    handler = generic.service(_Details(f"/{service.full_name}/{name}"))
    assert handler is not None
    return handler


def _requests(method: str, code: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "criproxy_cri_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


async def _call(handler: Any, raw: bytes, context: FakeContext) -> list[Any]:
    """The answers of a unary or server-streaming handler (a unary one gives one)."""
    if handler.unary_unary is not None:
        return [await handler.unary_unary(raw, context)]
    return [item async for item in handler.unary_stream(raw, context)]


@pytest.mark.parametrize("method", ["Version", "GetContainerEvents"])
async def test_bytes_that_are_no_request_answer_invalid_argument_naming_the_type(
    method: str,
) -> None:
    servicer = RecordingServicer()
    handler = _handler(servicer, method)
    context = FakeContext()
    before = _requests(method, "INVALID_ARGUMENT")
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AbortError):
        await _call(handler, NOT_A_MESSAGE, context)
    request_type = GetMessageClass(RUNTIME.methods_by_name[method].input_type).DESCRIPTOR
    assert context.status == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details.startswith(f"cannot decode the request as {request_type.full_name}: ")
    assert servicer.requests == []
    # the call is logged and counted like every other
    (line,) = [e for e in logs if e["event"] == "cri call"]
    assert (line["method"], line["code"]) == (method, "INVALID_ARGUMENT")
    assert line["error"] == context.details
    assert _requests(method, "INVALID_ARGUMENT") == before + 1


async def test_the_handlers_take_raw_bytes_so_grpc_never_decodes() -> None:
    for service in (RUNTIME, IMAGE):
        for method in service.methods:
            handler = _handler(object(), method.name, service)
            assert handler.request_deserializer is None, method.full_name
            assert handler.response_serializer is not None, method.full_name


async def test_a_valid_request_reaches_the_servicer_decoded() -> None:
    servicer = RecordingServicer()
    raw = api_pb2.VersionRequest(version="v1").SerializeToString()
    (response,) = await _call(_handler(servicer, "Version"), raw, FakeContext())
    assert response.version == "v1"
    assert servicer.requests == [api_pb2.VersionRequest(version="v1")]


async def test_an_empty_request_reaches_a_streaming_servicer() -> None:
    servicer = RecordingServicer()
    items = await _call(_handler(servicer, "GetContainerEvents"), b"", FakeContext())
    assert [i.container_id for i in items] == ["c1"]
    assert servicer.requests == [api_pb2.GetEventsRequest()]


async def test_a_domain_error_answers_its_code_and_message() -> None:
    context = FakeContext()
    raw = api_pb2.StopContainerRequest(container_id="abc").SerializeToString()
    with pytest.raises(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), "StopContainer"), raw, context)
    assert context.status == grpc.StatusCode.NOT_FOUND
    assert context.details == "container 'abc' not found"


async def test_a_domain_error_inside_an_exception_group_answers_its_code() -> None:
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), "RemoveContainer"), b"", context)
    assert (context.status, context.details) == (grpc.StatusCode.FAILED_PRECONDITION, "busy")


async def test_an_unexpected_error_answers_internal_naming_the_rpc() -> None:
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), "StartContainer"), b"", context)
    assert context.status == grpc.StatusCode.INTERNAL
    assert context.details == "internal error in StartContainer: RuntimeError: boom"


@pytest.mark.parametrize(
    ("method", "raw", "level"),
    [
        ("Version", b"", "debug"),  # a polling call that succeeded
        ("Version", NOT_A_MESSAGE, "info"),  # a polling call that failed
        ("StopContainer", b"", "info"),  # a change
    ],
)
async def test_polling_calls_that_succeed_are_logged_at_debug(
    method: str, raw: bytes, level: str
) -> None:
    with structlog.testing.capture_logs() as logs, contextlib.suppress(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), method), raw, FakeContext())
    (line,) = [e for e in logs if e["event"] == "cri call"]
    assert line["log_level"] == level


class CountingContext(FakeContext):
    """Remembers how often StopContainer's NOT_FOUND was counted when the status left."""

    def __init__(self) -> None:
        super().__init__()
        self.counted_at_abort = -1.0

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.counted_at_abort = _requests("StopContainer", "NOT_FOUND")
        await super().abort(code, details)


async def test_a_failed_call_is_counted_once_and_before_its_status_leaves() -> None:
    before = _requests("StopContainer", "NOT_FOUND")
    context = CountingContext()
    raw = api_pb2.StopContainerRequest(container_id="abc").SerializeToString()
    with pytest.raises(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), "StopContainer"), raw, context)
    assert context.counted_at_abort == before + 1
    assert _requests("StopContainer", "NOT_FOUND") == before + 1


@pytest.mark.parametrize("method", ["ExecSync", "GetContainerEvents"])
@pytest.mark.parametrize(
    ("outcome", "raised", "code"),
    [
        ("abort", grpc.aio.AbortError, "RESOURCE_EXHAUSTED"),
        ("cancel", asyncio.CancelledError, "CANCELLED"),
    ],
)
async def test_a_call_that_aborts_or_is_cancelled_is_logged_with_its_code(
    method: str, outcome: str, raised: type[BaseException], code: str
) -> None:
    context = FakeContext()
    with structlog.testing.capture_logs() as logs, pytest.raises(raised):
        await _call(_handler(EndingServicer(outcome), method), b"", context)
    (line,) = [e for e in logs if e["event"] == "cri call"]
    assert (line["method"], line["code"]) == (method, code)


@pytest.mark.parametrize("method", ["Attach", "StreamPodSandboxMetrics"])
async def test_an_rpc_the_servicer_lacks_answers_unimplemented_naming_it(method: str) -> None:
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await _call(_handler(RecordingServicer(), method), b"", context)
    assert context.status == grpc.StatusCode.UNIMPLEMENTED
    assert context.details == (
        f"runtime.v1.RuntimeService/{method} is not implemented by criproxy yet"
    )


# --- over a real server -----------------------------------------------------------------


@pytest.fixture
async def channel(unreachable: Any) -> AsyncIterator[grpc.aio.Channel]:
    """The real servicers and handlers of both services on a unix socket, no containerd."""
    domain = unreachable
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            service_handler(RUNTIME, RuntimeServicer(domain, domain, domain, domain, domain)),
            service_handler(IMAGE, ImageServicer(domain)),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="cpx-") as tmp:
        socket = Path(tmp) / "cri.sock"
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket}") as chan:
                yield chan
        finally:
            await server.stop(None)


async def _raw_call(channel: grpc.aio.Channel, method: Any, raw: bytes) -> tuple[Any, str]:
    """The status code and details of one call of `method` with `raw` as its request."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            async for _ in stream(raw, timeout=10):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            await unary(raw, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _field_shaped(rng: random.Random, depth: int = 0) -> bytes:
    """Bytes in protobuf's wire format with random field numbers, types and contents: many
    decode (into whatever fields those numbers are), so the servicers see random requests."""
    out = bytearray()
    for _ in range(rng.randint(1, 4)):
        number, wire = rng.randint(1, 20), rng.choice((0, 1, 2, 5))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(rng.getrandbits(rng.choice((1, 7, 32, 64))))
        elif wire in (1, 5):
            out += rng.randbytes(8 if wire == 1 else 4)
        else:
            kind = rng.choice(("text", "message", "bytes") if depth < 2 else ("text", "bytes"))
            if kind == "text":
                payload = "".join(rng.choices("abc-_./:0123456789 ", k=rng.randint(0, 12)))
                payload_bytes = payload.encode()
            elif kind == "message":
                payload_bytes = _field_shaped(rng, depth + 1)
            else:
                payload_bytes = rng.randbytes(rng.randint(0, 12))
            out += _varint(len(payload_bytes)) + payload_bytes
    return bytes(out)


def _decodes(method: Any, raw: bytes) -> bool:
    try:
        GetMessageClass(method.input_type).FromString(raw)
    except DecodeError:
        return False
    return True


async def test_random_bytes_never_answer_unknown(channel: grpc.aio.Channel) -> None:
    """400 calls of random rpcs: half random bytes, half random fields in the wire format."""
    rng = random.Random(11)
    methods = [*RUNTIME.methods, *IMAGE.methods]
    codes: Counter[tuple[bool, str]] = Counter()
    for i in range(400):
        method = rng.choice(methods)
        raw = rng.randbytes(rng.randint(1, 48)) if i % 2 else _field_shaped(rng)
        code, details = await _raw_call(channel, method, raw)
        decodes = _decodes(method, raw)
        codes[decodes, code.name] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            method.full_name,
            raw,
            details,
        )
        if decodes:
            assert not details.startswith("cannot decode"), (method.full_name, raw, details)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method.full_name, raw, details)
            name = method.input_type.full_name
            assert details.startswith(f"cannot decode the request as {name}: "), details
    # the seed gives a fair share of both kinds
    undecodable = sum(n for (decodes, _), n in codes.items() if not decodes)
    assert 100 <= undecodable <= 300, codes


@pytest.mark.parametrize("method", [*RUNTIME.methods, *IMAGE.methods], ids=lambda m: m.name)
async def test_an_empty_request_still_reaches_the_servicer(
    channel: grpc.aio.Channel, method: Any
) -> None:
    """b"" is every message with all fields unset: it decodes, and the servicer answers it."""
    code, details = await _raw_call(channel, method, b"")
    assert code != grpc.StatusCode.UNKNOWN
    assert not details.startswith("cannot decode"), details


async def test_an_empty_version_request_is_answered(channel: grpc.aio.Channel) -> None:
    version = channel.unary_unary(
        "/runtime.v1.RuntimeService/Version",
        request_serializer=None,
        response_deserializer=api_pb2.VersionResponse.FromString,
    )
    response = await version(b"", timeout=10)
    assert response.runtime_name == "criproxy"
