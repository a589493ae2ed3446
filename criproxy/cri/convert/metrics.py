"""CRI metrics from the stats domain's figures: ListMetricDescriptors and
ListPodSandboxMetrics, cAdvisor's metric names as containerd's CRI plugin sends them
(`internal/cri/server/list_pod_sandbox_metrics_linux.go`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.stats import pod_interfaces, u64

if TYPE_CHECKING:
    from collections.abc import Sequence

    from criproxy.stats import CgroupSample, ContainerMetricsInput, PodMetricsInput

__all__ = ["BASE_LABEL_KEYS", "container_metrics", "metric_descriptors", "pod_sandbox_metrics"]

_NS_PER_SECOND = 1_000_000_000

BASE_LABEL_KEYS = ("pod", "namespace", "container", "id", "image")
"""containerd's label keys, in its order; CRI-O aligned on the same five names.

The kubelet passes these through to /metrics/cadvisor, so `pod`, `namespace` and
`container` are what dashboards written against cAdvisor select on.
"""

_COUNTER = api_pb2.COUNTER
_GAUGE = api_pb2.GAUGE


@dataclass(frozen=True)
class _Desc:
    name: str
    help: str
    kind: api_pb2.MetricType.ValueType
    extra_labels: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_LABEL_KEYS + self.extra_labels


def _counter(name: str, help: str, *extra: str) -> _Desc:
    return _Desc(name, help, _COUNTER, extra)


def _gauge(name: str, help: str, *extra: str) -> _Desc:
    return _Desc(name, help, _GAUGE, extra)


# CPU: seconds are whole seconds, because a CRI Metric's value is a UInt64Value (containerd
# and CRI-O truncate the same way).
_CPU_USAGE = _counter(
    "container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds."
)
_CPU_USER = _counter(
    "container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds."
)
_CPU_SYSTEM = _counter(
    "container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds."
)
_CFS_PERIODS = _counter(
    "container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals."
)
_CFS_THROTTLED_PERIODS = _counter(
    "container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals."
)
_CFS_THROTTLED_SECONDS = _counter(
    "container_cpu_cfs_throttled_seconds_total",
    "Total time duration the container has been throttled.",
)
# Memory.
_MEMORY_USAGE = _gauge(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed.",
)
_MEMORY_MAX_USAGE = _gauge(
    "container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes."
)
_MEMORY_WORKING_SET = _gauge("container_memory_working_set_bytes", "Current working set in bytes.")
_MEMORY_RSS = _gauge("container_memory_rss", "Size of RSS in bytes.")
_MEMORY_CACHE = _gauge("container_memory_cache", "Number of bytes of page cache memory.")
_MEMORY_MAPPED_FILE = _gauge(
    "container_memory_mapped_file", "Size of memory mapped files in bytes."
)
_MEMORY_SWAP = _gauge("container_memory_swap", "Container swap usage in bytes.")
_MEMORY_KERNEL = _gauge(
    "container_memory_kernel_usage", "Size of kernel memory allocated in bytes."
)
_MEMORY_FAILCNT = _counter("container_memory_failcnt", "Number of memory usage hits limits.")
_MEMORY_ACTIVE_FILE = _gauge(
    "container_memory_total_active_file_bytes", "Page cache bytes on the active LRU list."
)
_MEMORY_INACTIVE_FILE = _gauge(
    "container_memory_total_inactive_file_bytes", "Page cache bytes on the inactive LRU list."
)
_MEMORY_FAILURES = _counter(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    "failure_type",
    "scope",
)
_OOM_EVENTS = _counter(
    "container_oom_events_total", "Count of out of memory events observed for the container."
)
# Block IO.
_FS_READS_BYTES = _counter(
    "container_fs_reads_bytes_total", "Cumulative count of bytes read.", "device"
)
_FS_WRITES_BYTES = _counter(
    "container_fs_writes_bytes_total", "Cumulative count of bytes written.", "device"
)
_FS_READS = _counter("container_fs_reads_total", "Cumulative count of reads completed.", "device")
_FS_WRITES = _counter(
    "container_fs_writes_total", "Cumulative count of writes completed.", "device"
)
_BLKIO_DEVICE_USAGE = _counter(
    "container_blkio_device_usage_total",
    "Blkio device bytes usage.",
    "device",
    "major",
    "minor",
    "operation",
)
# Writable layer, and the filesystem it lives on.
_FS_USAGE = _gauge(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    "device",
)
_FS_LIMIT = _gauge(
    "container_fs_limit_bytes",
    "Number of bytes that can be consumed by the container on this filesystem.",
    "device",
)
_FS_INODES_TOTAL = _gauge("container_fs_inodes_total", "Number of Inodes.", "device")
_FS_INODES_FREE = _gauge("container_fs_inodes_free", "Number of available Inodes.", "device")
# Network (pod level: the pod's containers share one network namespace).
_NET_RX_BYTES = _counter(
    "container_network_receive_bytes_total", "Cumulative count of bytes received.", "interface"
)
_NET_RX_PACKETS = _counter(
    "container_network_receive_packets_total", "Cumulative count of packets received.", "interface"
)
_NET_RX_DROPPED = _counter(
    "container_network_receive_packets_dropped_total",
    "Cumulative count of packets dropped while receiving.",
    "interface",
)
_NET_RX_ERRORS = _counter(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving.",
    "interface",
)
_NET_TX_BYTES = _counter(
    "container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", "interface"
)
_NET_TX_PACKETS = _counter(
    "container_network_transmit_packets_total",
    "Cumulative count of packets transmitted.",
    "interface",
)
_NET_TX_DROPPED = _counter(
    "container_network_transmit_packets_dropped_total",
    "Cumulative count of packets dropped while transmitting.",
    "interface",
)
_NET_TX_ERRORS = _counter(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting.",
    "interface",
)
# Processes.
_PROCESSES = _gauge("container_processes", "Number of processes running inside the container.")
_FILE_DESCRIPTORS = _gauge(
    "container_file_descriptors", "Number of open file descriptors for the container."
)
_SOCKETS = _gauge("container_sockets", "Number of open sockets for the container.")
_ULIMITS_SOFT = _gauge(
    "container_ulimits_soft",
    "Soft ulimit values for the container root process.",
    "ulimit",
)
_THREADS = _gauge("container_threads", "Number of threads running inside the container.")
_THREADS_MAX = _gauge(
    "container_threads_max",
    "Maximum number of threads allowed inside the container, infinity if value is zero.",
)
# Misc.
_LAST_SEEN = _gauge("container_last_seen", "Last time a container was seen by the exporter.")
_START_TIME = _gauge(
    "container_start_time_seconds", "Start time of the container since unix epoch in seconds."
)
# Spec.
_SPEC_MEMORY_LIMIT = _gauge(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container in bytes, 0 when unlimited.",
)
_SPEC_MEMORY_RESERVATION = _gauge(
    "container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container."
)
_SPEC_CPU_SHARES = _gauge("container_spec_cpu_shares", "CPU share of the container.")
_SPEC_CPU_PERIOD = _gauge("container_spec_cpu_period", "CPU period of the container.")
_SPEC_CPU_QUOTA = _gauge("container_spec_cpu_quota", "CPU quota of the container.")
_SPEC_MEMORY_SWAP_LIMIT = _gauge(
    "container_spec_memory_swap_limit_bytes",
    "Memory swap limit for the container in bytes, 0 when unlimited.",
)
# Pressure stall information (cgroup v2 only): cAdvisor's "waiting" is PSI's `some`,
# its "stalled" PSI's `full`.
_PSI_HELP = {
    "waiting": "tasks in the container have waited",
    "stalled": "no tasks in the container could make progress",
}
_PRESSURE = {
    (resource, kind): _counter(
        f"container_pressure_{resource}_{kind}_seconds_total",
        f"Total time duration {_PSI_HELP[kind]} due to {resource} congestion.",
    )
    for resource in ("cpu", "memory", "io")
    for kind in ("waiting", "stalled")
}

_DESCRIPTORS: tuple[_Desc, ...] = (
    _CPU_USAGE,
    _CPU_USER,
    _CPU_SYSTEM,
    _CFS_PERIODS,
    _CFS_THROTTLED_PERIODS,
    _CFS_THROTTLED_SECONDS,
    _MEMORY_USAGE,
    _MEMORY_MAX_USAGE,
    _MEMORY_WORKING_SET,
    _MEMORY_RSS,
    _MEMORY_CACHE,
    _MEMORY_MAPPED_FILE,
    _MEMORY_SWAP,
    _MEMORY_KERNEL,
    _MEMORY_FAILCNT,
    _MEMORY_ACTIVE_FILE,
    _MEMORY_INACTIVE_FILE,
    _MEMORY_FAILURES,
    _OOM_EVENTS,
    _FS_READS_BYTES,
    _FS_WRITES_BYTES,
    _FS_READS,
    _FS_WRITES,
    _BLKIO_DEVICE_USAGE,
    _FS_USAGE,
    _FS_LIMIT,
    _FS_INODES_TOTAL,
    _FS_INODES_FREE,
    _NET_RX_BYTES,
    _NET_RX_PACKETS,
    _NET_RX_DROPPED,
    _NET_RX_ERRORS,
    _NET_TX_BYTES,
    _NET_TX_PACKETS,
    _NET_TX_DROPPED,
    _NET_TX_ERRORS,
    _PROCESSES,
    _FILE_DESCRIPTORS,
    _SOCKETS,
    _ULIMITS_SOFT,
    _THREADS,
    _THREADS_MAX,
    _LAST_SEEN,
    _START_TIME,
    _SPEC_MEMORY_LIMIT,
    _SPEC_MEMORY_RESERVATION,
    _SPEC_CPU_SHARES,
    _SPEC_CPU_PERIOD,
    _SPEC_CPU_QUOTA,
    _SPEC_MEMORY_SWAP_LIMIT,
    *_PRESSURE.values(),
)


def metric_descriptors() -> list[api_pb2.MetricDescriptor]:
    """ListMetricDescriptors: every metric `pod_sandbox_metrics` may send, with its labels.

    The kubelet (PodAndContainerStatsFromCRI) reads these once and drops any metric
    whose name is not among them, so the two must stay in step. The set is cAdvisor's
    names that cgroup files, /proc, statvfs, net/dev and the container record can fill
    honestly; left out: per-CPU usage and hugetlb (no hugetlb hierarchy is read).
    """
    return [
        api_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys)
        for d in _DESCRIPTORS
    ]


class _Emitter:
    """Collects Metrics sharing one label prefix and timestamp, checking labels in step."""

    def __init__(self, base: Sequence[str], timestamp_ns: int) -> None:
        self.base = list(base)
        self.timestamp_ns = timestamp_ns
        self.metrics: list[api_pb2.Metric] = []

    def add(self, desc: _Desc, value: int, *extra: str) -> None:
        assert len(extra) == len(desc.extra_labels), desc.name
        self.metrics.append(
            api_pb2.Metric(
                name=desc.name,
                timestamp=self.timestamp_ns,
                metric_type=desc.kind,
                label_values=[*self.base, *extra],
                value=u64(value),
            )
        )


def _seconds(ns: int) -> int:
    return ns // _NS_PER_SECOND


def container_metrics(
    pod_name: str, namespace: str, c: ContainerMetricsInput, *, timestamp_ns: int | None = None
) -> api_pb2.ContainerMetrics:
    """One container's cAdvisor-named metrics, labelled (pod, namespace, container, id, image)."""
    s = c.sample
    if timestamp_ns is None:
        timestamp_ns = s.timestamp_ns if s is not None else time.time_ns()
    out = _Emitter((pod_name, namespace, c.name, c.id, c.image), timestamp_ns)
    out.add(_LAST_SEEN, _seconds(timestamp_ns))
    if c.started_at_ns:
        out.add(_START_TIME, _seconds(c.started_at_ns))
    if c.writable_layer_bytes is not None:
        out.add(_FS_USAGE, c.writable_layer_bytes, c.fs_device)
    if c.fs is not None:
        out.add(_FS_LIMIT, c.fs.limit_bytes, c.fs.device)
        out.add(_FS_INODES_TOTAL, c.fs.inodes_total, c.fs.device)
        out.add(_FS_INODES_FREE, c.fs.inodes_free, c.fs.device)
    if c.processes is not None:
        out.add(_FILE_DESCRIPTORS, c.processes.file_descriptors)
        out.add(_SOCKETS, c.processes.sockets)
        if c.processes.open_files_soft_limit is not None:  # unlimited: no uint64 says so
            out.add(_ULIMITS_SOFT, c.processes.open_files_soft_limit, "max_open_files")
    for desc, spec in (
        (_SPEC_CPU_SHARES, c.cpu_shares),
        (_SPEC_CPU_PERIOD, c.cpu_period),
        (_SPEC_CPU_QUOTA, c.cpu_quota),
        (_SPEC_MEMORY_RESERVATION, c.memory_reservation_bytes),
        (_SPEC_MEMORY_SWAP_LIMIT, c.memory_swap_limit_bytes),
    ):
        if spec is not None:
            out.add(desc, spec)
    if s is not None:
        _cgroup_metrics(out, s)
    return api_pb2.ContainerMetrics(container_id=c.id, metrics=out.metrics)


def _cgroup_metrics(out: _Emitter, s: CgroupSample) -> None:
    if s.has_cpu:
        out.add(_CPU_USAGE, _seconds(s.cpu_usage_ns))
        out.add(_CPU_USER, _seconds(s.cpu_user_ns))
        out.add(_CPU_SYSTEM, _seconds(s.cpu_system_ns))
        out.add(_CFS_PERIODS, s.cpu_periods)
        out.add(_CFS_THROTTLED_PERIODS, s.cpu_throttled_periods)
        out.add(_CFS_THROTTLED_SECONDS, _seconds(s.cpu_throttled_ns))
    if s.has_memory:
        out.add(_MEMORY_USAGE, s.memory_usage_bytes)
        out.add(_MEMORY_MAX_USAGE, s.max_usage_bytes)
        out.add(_MEMORY_WORKING_SET, s.memory_working_set_bytes)
        out.add(_MEMORY_RSS, s.rss_bytes)
        out.add(_MEMORY_CACHE, s.cache_bytes)
        out.add(_MEMORY_MAPPED_FILE, s.mapped_file_bytes)
        out.add(_MEMORY_KERNEL, s.kernel_usage_bytes)
        out.add(_MEMORY_ACTIVE_FILE, s.active_file_bytes)
        out.add(_MEMORY_INACTIVE_FILE, s.inactive_file_bytes)
        out.add(_MEMORY_FAILCNT, s.failcnt)
        out.add(_MEMORY_FAILURES, s.container_page_faults, "pgfault", "container")
        out.add(_MEMORY_FAILURES, s.container_major_page_faults, "pgmajfault", "container")
        out.add(_MEMORY_FAILURES, s.page_faults, "pgfault", "hierarchy")
        out.add(_MEMORY_FAILURES, s.major_page_faults, "pgmajfault", "hierarchy")
        out.add(_SPEC_MEMORY_LIMIT, s.memory_limit_bytes or 0)
        if s.swap_usage_bytes is not None:
            out.add(_MEMORY_SWAP, s.swap_usage_bytes)
    out.add(_OOM_EVENTS, s.oom_kills)
    out.add(_PROCESSES, s.pids)
    out.add(_THREADS, s.pids)
    out.add(_THREADS_MAX, s.pids_limit)
    for resource, pressure in (
        ("cpu", s.cpu_pressure),
        ("memory", s.memory_pressure),
        ("io", s.io_pressure),
    ):
        if pressure is None:
            continue
        for kind, data in (("waiting", pressure.some), ("stalled", pressure.full)):
            if data is not None:
                out.add(_PRESSURE[resource, kind], _seconds(data.total_ns))
    for io in s.block_io:
        major, minor = str(io.major), str(io.minor)
        out.add(_BLKIO_DEVICE_USAGE, io.read_bytes, io.device, major, minor, "Read")
        out.add(_BLKIO_DEVICE_USAGE, io.write_bytes, io.device, major, minor, "Write")
        out.add(_FS_READS_BYTES, io.read_bytes, io.device)
        out.add(_FS_WRITES_BYTES, io.write_bytes, io.device)
        out.add(_FS_READS, io.reads, io.device)
        out.add(_FS_WRITES, io.writes, io.device)


def pod_sandbox_metrics(pod: PodMetricsInput) -> api_pb2.PodSandboxMetrics:
    """ListPodSandboxMetrics for one pod: network at pod level, the rest per container.

    Pod-level metrics carry an empty container and image, as containerd sends them. Every
    interface but `lo` is reported (cAdvisor's set); `interfaces` None (host network) sends
    none. `timestamp_ns` stamps the pod-level metrics, defaulting to now.
    """
    ts = time.time_ns() if pod.timestamp_ns is None else pod.timestamp_ns
    out = _Emitter((pod.pod_name, pod.namespace, "", pod.sandbox_id, ""), ts)
    for i in pod_interfaces(pod.interfaces or ()):
        out.add(_NET_RX_BYTES, i.rx_bytes, i.name)
        out.add(_NET_RX_PACKETS, i.rx_packets, i.name)
        out.add(_NET_RX_DROPPED, i.rx_dropped, i.name)
        out.add(_NET_RX_ERRORS, i.rx_errors, i.name)
        out.add(_NET_TX_BYTES, i.tx_bytes, i.name)
        out.add(_NET_TX_PACKETS, i.tx_packets, i.name)
        out.add(_NET_TX_DROPPED, i.tx_dropped, i.name)
        out.add(_NET_TX_ERRORS, i.tx_errors, i.name)
    return api_pb2.PodSandboxMetrics(
        pod_sandbox_id=pod.sandbox_id,
        metrics=out.metrics,
        container_metrics=[
            container_metrics(
                pod.pod_name,
                pod.namespace,
                c,
                timestamp_ns=c.sample.timestamp_ns if c.sample is not None else ts,
            )
            for c in pod.containers
        ],
    )
