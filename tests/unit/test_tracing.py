"""Tracing with the OpenTelemetry SDK's in-memory exporter: a CRI call's span continues the
caller's trace, client spans are its children, across a hand-off to another task too; off,
every helper is a no-op."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from criproxy import tracing
from criproxy.config import TracingSection

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSection(), exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_a_call_continues_the_callers_trace_with_its_client_spans_beneath(
    exported: InMemorySpanExporter,
) -> None:
    async def call() -> None:
        metadata = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
        with tracing.server_span("RunPodSandbox", metadata):
            with tracing.client_span("containerd.services.tasks.v1.Tasks/Create"):
                pass
            handed = tracing.current()
            async with anyio.create_task_group() as tg:

                async def elsewhere() -> None:  # as a pod loop runs a call's job
                    with tracing.attached(handed), tracing.client_span("cni ADD bridge") as span:
                        tracing.failed(span, "exit status 1")

                tg.start_soon(elsewhere)

    anyio.run(call)
    spans = {s.name: s for s in exported.get_finished_spans()}
    server = spans["runtime.v1/RunPodSandbox"]
    assert server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT
    for child in ("containerd.services.tasks.v1.Tasks/Create", "cni ADD bridge"):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == server.context.span_id, child
        assert spans[child].kind is SpanKind.CLIENT
    assert spans["cni ADD bridge"].status.status_code is StatusCode.ERROR


def test_without_a_caller_a_call_starts_its_own_trace(exported: InMemorySpanExporter) -> None:
    with tracing.server_span("Version", {}):
        pass
    (span,) = exported.get_finished_spans()
    assert span.parent is None


def test_off_every_helper_is_a_no_op() -> None:
    assert not tracing.enabled()
    with tracing.server_span("Version", {}) as span, tracing.client_span("x") as child:
        assert span is None and child is None
        tracing.failed(child, "nothing to mark")
    assert tracing.current() is None
    with tracing.attached(None):
        pass
