"""Traces over OTLP from a running criproxy: a collector in the test receives the spans of
a RunPodSandbox made with the kubelet's `traceparent`, with its containerd and CNI children."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import wait_until
from tests.integration.pods_env import PodEnv, pod_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
KUBELET_SPAN = "00f067aa0ba902b7"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[object] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self) -> dict[str, list[object]]:
        with self.lock:
            out: dict[str, list[object]] = {}
            for span in self.spans:
                out.setdefault(span.name, []).append(span)  # type: ignore[attr-defined]
            return out


@pytest.fixture(scope="module")
def traced(pod_env: PodEnv) -> Iterator[tuple[PodEnv, Collector]]:
    """The module's criproxy, restarted exporting to a collector of the test's own."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = pod_env.proxy
    proxy.config["tracing"] = {"endpoint": f"127.0.0.1:{port}"}
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export every 100 ms, not 5 s
    try:
        proxy.stop()
        proxy.start()
        yield pod_env, collector
    finally:
        os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        proxy.config.pop("tracing", None)
        proxy.stop()
        proxy.start()
        server.stop(None)


def test_a_traced_run_pod_sandbox_shows_its_containerd_and_cni_spans(
    traced: tuple[PodEnv, Collector],
) -> None:
    env, collector = traced
    config = pod_config("traced")
    metadata = (("traceparent", f"00-{TRACE_ID}-{KUBELET_SPAN}-01"),)
    pod_id = env.proxy.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config), metadata=metadata, timeout=120
    ).pod_sandbox_id
    env.created.append(pod_id)

    wait_until(lambda: "runtime.v1/RunPodSandbox" in collector.named(), 20, what="the span")
    (call,) = collector.named()["runtime.v1/RunPodSandbox"]
    assert call.trace_id.hex() == TRACE_ID  # type: ignore[attr-defined]
    assert call.parent_span_id.hex() == KUBELET_SPAN  # type: ignore[attr-defined]

    def children() -> list[str]:
        return [
            s.name  # type: ignore[attr-defined]
            for s in collector.spans
            if s.trace_id.hex() == TRACE_ID and s.parent_span_id == call.span_id  # type: ignore[attr-defined]
        ]

    wait_until(lambda: any(n.startswith("cni ADD") for n in children()), 10, what="CNI spans")
    names = children()
    assert "containerd.services.tasks.v1.Tasks/Create" in names, names
    assert "containerd.services.containers.v1.Containers/Create" in names, names
    assert {"cni ADD bridge", "cni ADD portmap"} <= set(names), names  # the network's chain
    assert any(n.startswith("registry GET") for n in names), "the pause image's pull"
    env.stop(pod_id)
    env.remove(pod_id)
