"""OpenTelemetry tracing: one server span per CRI call (a child of the kubelet's span when
its gRPC metadata carries a `traceparent`), with client spans for containerd calls,
registry requests, CNI plugin runs and NRI events beneath it, exported over OTLP/gRPC to
`[tracing] endpoint`. Off unless that is set: then every helper here is a no-op costing a
flag check, and the OpenTelemetry SDK is not even imported.

Work a CRI call hands to its pod's loop runs in that loop's task; the loop carries the
call's trace context to it (`current`/`attached`), so its containerd and CNI spans stay
children of the call.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from criproxy.config import TracingSection


class _State:
    tracer: Tracer | None = None
    provider: TracerProvider | None = None


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


def configure(config: TracingSection, exporter: SpanExporter | None = None) -> None:
    """Start tracing (once per process): OTLP to `config.endpoint`, or to `exporter`
    (tests pass the SDK's in-memory one)."""
    if not config.endpoint and exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from criproxy import __version__

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        ),
        sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=config.endpoint, insecure=config.insecure)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    _state.provider = provider
    _state.tracer = provider.get_tracer("criproxy", __version__)


def shutdown() -> None:
    """Export what is buffered and stop (at criproxy's exit)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.tracer = _state.provider = None


@contextlib.contextmanager
def server_span(method: str, metadata: Mapping[str, str]) -> Iterator[Any]:
    """The span of one CRI call, continuing the caller's trace when it sent one."""
    if _state.tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract(dict(metadata))
    with _state.tracer.start_as_current_span(
        f"runtime.v1/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": method},
    ) as span:
        yield span


@contextlib.contextmanager
def client_span(name: str, **attributes: str | int) -> Iterator[Any]:
    """A span for one call criproxy makes (containerd, registry, CNI plugin, NRI plugin)."""
    if _state.tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _state.tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def failed(span: Any, error: BaseException | str) -> None:
    """Mark `span` (from the helpers above) as failed."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, str(error)))


def carrier() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (`traceparent`), for the next hop."""
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return tuple(headers.items())


def current() -> Context | None:
    """The trace context to carry to another task (None when tracing is off)."""
    if _state.tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def attached(ctx: Context | None) -> Iterator[None]:
    """Run under a context `current` captured in another task."""
    if ctx is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)
