"""Prometheus metrics: per-rpc latency and counts by status code, served when configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import prometheus_client

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

CRI_LATENCY = prometheus_client.Histogram(
    "criproxy_cri_request_duration_seconds",
    "Time to answer one CRI call, by rpc.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CRI_REQUESTS = prometheus_client.Counter(
    "criproxy_cri_requests",
    "CRI calls answered, by rpc and gRPC status code.",
    ["method", "code"],
)


def observe_call(method: str, code: str, seconds: float) -> None:
    CRI_LATENCY.labels(method).observe(seconds)
    CRI_REQUESTS.labels(method, code).inc()


class MetricsEndpoint:
    """The HTTP endpoint; owned by the server, which stops it on shutdown."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = prometheus_client.start_http_server(self.port, self.host)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
