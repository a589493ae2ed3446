"""Prometheus metrics, all named `criproxy_*` in Prometheus' conventions (base units in the
name, counters exposed with `_total`), and the HTTP endpoint that serves them with
`/healthz`. The reference of every name is in the README ("Metrics").

Observations are cheap (a histogram observation is a few microseconds, against ~0.4 ms of
CPU for one containerd round trip); what is a count of things (pods by state, queued pod-loop
jobs, plugins, threads) is read at scrape time by a collector, not kept up to date.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Mapping
    from wsgiref.simple_server import WSGIServer

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SLOW = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

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
CONTAINERD_LATENCY = prometheus_client.Histogram(
    "criproxy_containerd_request_duration_seconds",
    "Time of one containerd call, by service and method (failed calls too).",
    ["service", "method"],
    buckets=_FAST,
)
CONTAINERD_ERRORS = prometheus_client.Counter(
    "criproxy_containerd_request_errors",
    "containerd calls that failed, by service, method and gRPC status code.",
    ["service", "method", "code"],
)
CONTAINERD_UP = prometheus_client.Gauge(
    "criproxy_containerd_up",
    "1 when containerd answered criproxy's last health check (every 5 s), else 0.",
)
CNI_LATENCY = prometheus_client.Histogram(
    "criproxy_cni_operation_duration_seconds",
    "Time of one pod network operation (all plugins of the network), by CNI command.",
    ["operation"],
    buckets=_FAST,
)
CNI_FAILURES = prometheus_client.Counter(
    "criproxy_cni_operation_failures",
    "Pod network operations that failed, by CNI command.",
    ["operation"],
)
PULL_BYTES = prometheus_client.Counter(
    "criproxy_image_pull_bytes",
    "Bytes downloaded from registries for pulls (compressed layers, configs, manifests).",
)
PULL_DURATION = prometheus_client.Histogram(
    "criproxy_image_pull_duration_seconds",
    "Time of one image pull that reached a registry, by outcome (ok or the error's code).",
    ["outcome"],
    buckets=_SLOW,
)
PULLS_IN_FLIGHT = prometheus_client.Gauge(
    "criproxy_image_pulls_in_flight", "Image pulls under way (one per image, shared by callers)."
)
STREAM_SESSIONS = prometheus_client.Gauge(
    "criproxy_streaming_sessions",
    "Streaming sessions open now, by kind (exec, attach, portforward).",
    ["kind"],
)
STREAM_SESSIONS_STARTED = prometheus_client.Counter(
    "criproxy_streaming_sessions_started",
    "Streaming sessions started, by kind.",
    ["kind"],
)
NRI_LATENCY = prometheus_client.Histogram(
    "criproxy_nri_hook_duration_seconds",
    "Time one NRI event took with every subscribed plugin, by event.",
    ["event"],
    buckets=_FAST,
)
NRI_FAILURES = prometheus_client.Counter(
    "criproxy_nri_hook_failures",
    "NRI events a plugin failed (refused, timed out or went away), by event and reason.",
    ["event", "reason"],
)
LOOP_LAG = prometheus_client.Histogram(
    "criproxy_event_loop_lag_seconds",
    "How late criproxy's event loop woke a 1 s timer: time it spent on other work.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
for _kind in ("exec", "attach", "portforward"):
    STREAM_SESSIONS.labels(_kind)
    STREAM_SESSIONS_STARTED.labels(_kind)
for _op in ("ADD", "DEL", "CHECK"):
    CNI_LATENCY.labels(_op)
    CNI_FAILURES.labels(_op)
prometheus_client.ProcessCollector(namespace="criproxy")


def observe_call(method: str, code: str, seconds: float) -> None:
    CRI_LATENCY.labels(method).observe(seconds)
    CRI_REQUESTS.labels(method, code).inc()


@functools.cache
def rpc_names(full: str) -> tuple[str, str]:
    """`/containerd.services.tasks.v1.Tasks/Kill` -> ("Tasks", "Kill")."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service.rpartition(".")[2] or "unknown", method or "unknown"


def observe_containerd(full_method: str, seconds: float | None, code: str | None) -> None:
    """One containerd call's time (None for a stream's) and its error code, if it failed."""
    service, method = rpc_names(full_method)
    if seconds is not None:
        CONTAINERD_LATENCY.labels(service, method).observe(seconds)
    if code is not None:
        CONTAINERD_ERRORS.labels(service, method, code).inc()


@dataclass
class State:
    """What the collector reads at scrape time; the server fills it in."""

    pods_by_state: Callable[[], Mapping[str, int]] = dict
    containers_by_state: Callable[[], Mapping[str, int]] = dict
    pod_loop_jobs: Callable[[], int] = lambda: 0
    nri_plugins: Callable[[], int] = lambda: 0
    extra: dict[str, Any] = field(default_factory=dict)


STATE = State()

_POD_STATES = ("ready", "notready")
_CONTAINER_STATES = ("created", "running", "exited")


class _StateCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        pods = GaugeMetricFamily(
            "criproxy_pod_sandboxes", "Pod sandboxes criproxy knows, by state.", labels=["state"]
        )
        counted = dict.fromkeys(_POD_STATES, 0) | dict(STATE.pods_by_state())
        for state, count in sorted(counted.items()):
            pods.add_metric([state], count)
        yield pods
        containers = GaugeMetricFamily(
            "criproxy_containers", "Containers criproxy knows, by state.", labels=["state"]
        )
        counted = dict.fromkeys(_CONTAINER_STATES, 0) | dict(STATE.containers_by_state())
        for state, count in sorted(counted.items()):
            containers.add_metric([state], count)
        yield containers
        yield GaugeMetricFamily(
            "criproxy_pod_loop_queued_jobs",
            "Jobs waiting in pods' loops (each pod's changes run one at a time).",
            value=STATE.pod_loop_jobs(),
        )
        yield GaugeMetricFamily(
            "criproxy_nri_plugins",
            "NRI plugins connected and synchronised.",
            value=STATE.nri_plugins(),
        )
        yield GaugeMetricFamily(
            "criproxy_process_threads", "Threads of criproxy's process.", value=_threads()
        )


def _threads() -> int:
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


prometheus_client.REGISTRY.register(_StateCollector())


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> Timer:
        self.started = time.monotonic()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started


class MetricsEndpoint:
    """`/metrics` and `/healthz` over HTTP; owned by the server, which stops it on shutdown.

    `/healthz` answers 200 while containerd answers criproxy's health checks, 503 (naming
    the last error) otherwise: the same condition as `criproxy_containerd_up`."""

    def __init__(self, address: str, health: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self._health = health
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The bound `host:port` (the port chosen when 0 was asked)."""
        port = self._server.server_port if self._server is not None else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def start(self) -> None:
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client.exposition import ThreadingWSGIServer

        metrics_app = prometheus_client.make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("PATH_INFO") == "/healthz":
                ok, why = self._health()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [(why or "ok").encode() + b"\n"]
            return metrics_app(environ, start_response)

        class _Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds are not news

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class _Server(ThreadingWSGIServer):
            address_family = family

        self._server = make_server(
            self.host, self.port, app, server_class=_Server, handler_class=_Quiet
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
