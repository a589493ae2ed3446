"""Container and pod stats: containerd's cgroup metrics turned into CRI's stats and metrics.

Nothing here calls containerd. The caller fetches `tasks.Metrics` (one `types.Metric` per
task, its `data` an `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`) and the pod's
`/proc/<pid>/net/dev`, and this module does the arithmetic as containerd's CRI plugin
does (`internal/cri/server/container_stats_list.go`, `sandbox_stats_linux.go`,
`list_pod_sandbox_metrics_linux.go`), so the kubelet's summary API and evictions see the
numbers they would on containerd; where containerd's uint64 arithmetic would wrap, the
result is floored at 0 instead (said where it happens). The one cgroup-version switch
lives in `decode_metrics`; everything after works on the version-neutral `CgroupSample`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from google.protobuf.message import DecodeError

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.containerd.cgroups.v2 import metrics_pb2 as cg2
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.errors import Internal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "BASE_LABEL_KEYS",
    "DEFAULT_INTERFACE",
    "BlockIo",
    "CgroupSample",
    "ContainerAttributes",
    "ContainerMetricsInput",
    "InterfaceStats",
    "PodAttributes",
    "Pressure",
    "PressureData",
    "container_metrics",
    "container_stats",
    "decode_metrics",
    "metric_descriptors",
    "nano_cores",
    "network_usage",
    "pod_sandbox_metrics",
    "pod_sandbox_stats",
    "read_net_dev",
]

_V1_TYPE = "io.containerd.cgroups.v1.Metrics"
_V2_TYPE = "io.containerd.cgroups.v2.Metrics"

DEFAULT_INTERFACE = "eth0"
"""The pod's default interface, as the kubelet and containerd name it."""
_LOOPBACK = "lo"

_UNLIMITED_ABOVE = 1 << 62
"""Limits above this are "no limit" (the kernel rounds its max, so not exactly 2**63-1)."""
_U64_MAX = (1 << 64) - 1
_NS_PER_SECOND = 1_000_000_000
_NS_PER_USEC = 1_000


@dataclass(frozen=True)
class PressureData:
    """One PSI line (`some` or `full`); `total_ns` already in nanoseconds, as CRI wants."""

    total_ns: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """Pressure stall information of one resource (cgroup v2 only)."""

    some: PressureData | None = None
    full: PressureData | None = None


@dataclass(frozen=True)
class BlockIo:
    """Per-device block IO counters, cumulative."""

    device: str
    """The device node (`/dev/sda`) when cgroup v1 named it, else `major:minor`."""
    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass(frozen=True)
class CgroupSample:
    """One cgroup's metrics at one instant, the same for cgroup v1 and v2.

    Memory figures follow cAdvisor and containerd: on v1 the hierarchical `total_*`
    counters, on v2 the cgroup's own (which are hierarchical already). A group whose
    controller was absent has its `has_*` flag false and zeros.
    """

    timestamp_ns: int
    cgroup_version: Literal[1, 2]
    has_cpu: bool = False
    cpu_usage_ns: int = 0
    """Cumulative CPU time, all cores."""
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_ns: int = 0
    has_memory: bool = False
    memory_usage_bytes: int = 0
    memory_working_set_bytes: int = 0
    """usage - inactive file, floored at 0: what the kubelet evicts on."""
    memory_limit_bytes: int | None = None
    """None when there is no limit."""
    available_bytes: int = 0
    """limit - working set when there is a limit (floored at 0), else 0 as containerd sends."""
    rss_bytes: int = 0
    """v1 total_rss; v2 anon (as cAdvisor counts RSS on v2)."""
    cache_bytes: int = 0
    mapped_file_bytes: int = 0
    active_file_bytes: int = 0
    inactive_file_bytes: int = 0
    max_usage_bytes: int = 0
    """The high-water mark (v1 max_usage_in_bytes, v2 memory.peak; 0 on kernels without it)."""
    failcnt: int = 0
    """Times usage hit the limit (v1 failcnt, v2 memory.events `max`)."""
    page_faults: int = 0
    major_page_faults: int = 0
    container_page_faults: int = 0
    """Faults of this cgroup alone (v1 `pgfault`, not `total_pgfault`); on v2 = page_faults."""
    container_major_page_faults: int = 0
    swap_usage_bytes: int | None = None
    """Swap alone (v1: memsw - usage). None when swap is not accounted (v1 without memsw)."""
    swap_limit_bytes: int | None = None
    """Swap alone that may be used; None when unlimited or not accounted."""
    oom_kills: int = 0
    pids: int = 0
    """pids.current: the tasks in the cgroup (the kernel counts threads)."""
    pids_limit: int = 0
    """pids.max, 0 when unlimited."""
    block_io: tuple[BlockIo, ...] = ()
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None


@dataclass(frozen=True)
class InterfaceStats:
    """One line of /proc/<pid>/net/dev: cumulative counters of one interface."""

    name: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class ContainerAttributes:
    """What CRI's ContainerAttributes carries, from criproxy's own container record."""

    id: str
    name: str
    attempt: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodAttributes:
    """What CRI's PodSandboxAttributes carries, from criproxy's own sandbox record."""

    id: str
    name: str
    uid: str
    namespace: str
    attempt: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- decoding


def decode_metrics(type_url: str, value: bytes, *, timestamp_ns: int | None = None) -> CgroupSample:
    """Decode one task's `types.Metric.data` into a CgroupSample.

    containerd 1.6 may send the type URL without the `type.googleapis.com/` prefix, so
    only its last path element is matched. Pass the Metric's own timestamp (containerd
    stamps the moment it collected); without one the sample is stamped now.
    """
    ts = time.time_ns() if timestamp_ns is None else timestamp_ns
    kind = type_url.rsplit("/", 1)[-1]
    try:
        if kind == _V1_TYPE:
            return _from_v1(cg1.Metrics.FromString(value), ts)
        if kind == _V2_TYPE:
            return _from_v2(cg2.Metrics.FromString(value), ts)
    except DecodeError as exc:
        raise Internal(f"undecodable task metrics of type {kind}: {exc}") from exc
    raise Internal(f"unexpected task metrics type {type_url!r}")


def limit_or_none(value: int) -> int | None:
    """A cgroup limit, or None for "no limit" (the kernel's near-2**63 or v2's `max`).

    0 also reads as no limit: it is what containerd's cgroups library reports for a
    limit file that is absent, and a real limit of 0 bytes would not leave a task alive.
    """
    return value if 0 < value <= _UNLIMITED_ABOVE else None


def working_set(usage: int, inactive_file: int) -> int:
    """containerd's getWorkingSet: usage - inactive file, 0 when inactive file exceeds usage."""
    return usage - inactive_file if inactive_file < usage else 0


def available_bytes(limit: int | None, working_set: int) -> int:
    """containerd's getAvailableBytes, floored at 0 where Go's uint64 would wrap around."""
    return max(limit - working_set, 0) if limit is not None else 0


def _pressure(psi: cg2.PSIStats) -> Pressure:
    def line(d: cg2.PSIData) -> PressureData:
        return PressureData(d.total * _NS_PER_USEC, d.avg10, d.avg60, d.avg300)

    return Pressure(
        some=line(psi.some) if psi.HasField("some") else None,
        full=line(psi.full) if psi.HasField("full") else None,
    )


def _from_v1(m: cg1.Metrics, ts: int) -> CgroupSample:
    s = CgroupSample(timestamp_ns=ts, cgroup_version=1)
    if m.HasField("cpu") and m.cpu.HasField("usage"):
        u, t = m.cpu.usage, m.cpu.throttling
        s = replace(
            s,
            has_cpu=True,
            cpu_usage_ns=u.total,
            cpu_user_ns=u.user,
            cpu_system_ns=u.kernel,
            cpu_periods=t.periods,
            cpu_throttled_periods=t.throttled_periods,
            cpu_throttled_ns=t.throttled_time,
        )
    if m.HasField("memory") and m.memory.HasField("usage"):
        mem = m.memory
        limit = limit_or_none(mem.usage.limit)
        ws = working_set(mem.usage.usage, mem.total_inactive_file)
        s = replace(
            s,
            has_memory=True,
            memory_usage_bytes=mem.usage.usage,
            memory_working_set_bytes=ws,
            memory_limit_bytes=limit,
            available_bytes=available_bytes(limit, ws),
            rss_bytes=mem.total_rss,
            cache_bytes=mem.total_cache,
            mapped_file_bytes=mem.total_mapped_file,
            active_file_bytes=mem.total_active_file,
            inactive_file_bytes=mem.total_inactive_file,
            max_usage_bytes=mem.usage.max,
            failcnt=mem.usage.failcnt,
            page_faults=mem.total_pg_fault,
            major_page_faults=mem.total_pg_maj_fault,
            container_page_faults=mem.pg_fault,
            container_major_page_faults=mem.pg_maj_fault,
        )
        # memsw counts memory + swap. Its limit file is never 0 where swap is accounted;
        # where it is not, the cgroups library leaves the whole entry zero.
        if mem.swap.limit != 0:
            memsw_limit = limit_or_none(mem.swap.limit)
            s = replace(
                s,
                swap_usage_bytes=max(mem.swap.usage - mem.usage.usage, 0),
                swap_limit_bytes=(
                    max(memsw_limit - limit, 0)
                    if memsw_limit is not None and limit is not None
                    else None
                ),
            )
    if m.HasField("memory_oom_control"):
        s = replace(s, oom_kills=m.memory_oom_control.oom_kill)
    if m.HasField("pids"):
        s = replace(s, pids=m.pids.current, pids_limit=m.pids.limit)
    if m.HasField("blkio"):
        s = replace(s, block_io=_v1_block_io(m.blkio))
    return s


def _v1_block_io(blkio: cg1.BlkIOStat) -> tuple[BlockIo, ...]:
    """Fold blkio's per-op lines (Read, Write, Sync, Async, ...) into one record per device."""
    counters: dict[tuple[int, int], dict[str, int]] = {}
    names: dict[tuple[int, int], str] = {}
    for entries, suffix in (
        (blkio.io_service_bytes_recursive, "_bytes"),
        (blkio.io_serviced_recursive, "s"),
    ):
        for e in entries:
            op = e.op.lower()
            if op not in ("read", "write"):
                continue
            key = (e.major, e.minor)
            names.setdefault(key, e.device or f"{e.major}:{e.minor}")
            c = counters.setdefault(key, {})
            c[op + suffix] = c.get(op + suffix, 0) + e.value
    return tuple(
        BlockIo(
            device=names[key],
            major=key[0],
            minor=key[1],
            read_bytes=c.get("read_bytes", 0),
            write_bytes=c.get("write_bytes", 0),
            reads=c.get("reads", 0),
            writes=c.get("writes", 0),
        )
        for key, c in sorted(counters.items())
    )


def _from_v2(m: cg2.Metrics, ts: int) -> CgroupSample:
    s = CgroupSample(timestamp_ns=ts, cgroup_version=2)
    if m.HasField("cpu"):
        cpu = m.cpu
        s = replace(
            s,
            has_cpu=True,
            cpu_usage_ns=cpu.usage_usec * _NS_PER_USEC,
            cpu_user_ns=cpu.user_usec * _NS_PER_USEC,
            cpu_system_ns=cpu.system_usec * _NS_PER_USEC,
            cpu_periods=cpu.nr_periods,
            cpu_throttled_periods=cpu.nr_throttled,
            cpu_throttled_ns=cpu.throttled_usec * _NS_PER_USEC,
            cpu_pressure=_pressure(cpu.psi) if cpu.HasField("psi") else None,
        )
    if m.HasField("memory"):
        mem = m.memory
        limit = limit_or_none(mem.usage_limit)
        ws = working_set(mem.usage, mem.inactive_file)
        s = replace(
            s,
            has_memory=True,
            memory_usage_bytes=mem.usage,
            memory_working_set_bytes=ws,
            memory_limit_bytes=limit,
            available_bytes=available_bytes(limit, ws),
            rss_bytes=mem.anon,
            cache_bytes=mem.file,
            mapped_file_bytes=mem.file_mapped,
            active_file_bytes=mem.active_file,
            inactive_file_bytes=mem.inactive_file,
            max_usage_bytes=mem.max_usage,
            page_faults=mem.pgfault,
            major_page_faults=mem.pgmajfault,
            container_page_faults=mem.pgfault,
            container_major_page_faults=mem.pgmajfault,
            swap_usage_bytes=mem.swap_usage,
            # memory.swap.max may truly be 0 (the kubelet's NoSwap), so 0 is a limit here.
            swap_limit_bytes=mem.swap_limit if mem.swap_limit <= _UNLIMITED_ABOVE else None,
            memory_pressure=_pressure(mem.psi) if mem.HasField("psi") else None,
        )
    if m.HasField("memory_events"):
        s = replace(s, oom_kills=m.memory_events.oom_kill, failcnt=m.memory_events.max)
    if m.HasField("pids"):
        s = replace(s, pids=m.pids.current, pids_limit=m.pids.limit)
    if m.HasField("io"):
        s = replace(
            s,
            block_io=tuple(
                BlockIo(
                    device=f"{e.major}:{e.minor}",
                    major=e.major,
                    minor=e.minor,
                    read_bytes=e.rbytes,
                    write_bytes=e.wbytes,
                    reads=e.rios,
                    writes=e.wios,
                )
                for e in m.io.usage
            ),
            io_pressure=_pressure(m.io.psi) if m.io.HasField("psi") else None,
        )
    return s


def nano_cores(previous: CgroupSample | None, current: CgroupSample) -> int:
    """CRI's usage_nano_cores: CPU-ns used per second of wall time since `previous`.

    0 without a previous sample, over a non-positive interval, or when the cumulative
    counter went backwards (a container just replaced), as containerd answers then.
    """
    if previous is None:
        return 0
    interval = current.timestamp_ns - previous.timestamp_ns
    used = current.cpu_usage_ns - previous.cpu_usage_ns
    if interval <= 0 or used < 0:
        return 0
    return used * _NS_PER_SECOND // interval


# ---------------------------------------------------------------------------- net/dev


def read_net_dev(text: str) -> list[InterfaceStats]:
    """Parse /proc/<pid>/net/dev: every interface of the process's network namespace.

    The first two lines are headers; each other line is `name: ` followed by 8 receive
    and 8 transmit counters. Interface names cannot contain `:`, and a counter may run
    into the colon on old kernels (`eth0:12345`), so the line is split at the colon.
    """
    interfaces = []
    for line in text.splitlines()[2:]:
        if not line.strip():
            continue
        name, sep, counters = line.partition(":")
        fields = counters.split()
        if not sep or len(fields) < 16:
            raise Internal(f"unexpected line in net/dev: {line!r}")
        try:
            n = [int(f) for f in fields[:16]]
        except ValueError:
            raise Internal(f"unexpected line in net/dev: {line!r}") from None
        interfaces.append(
            InterfaceStats(
                name=name.strip(),
                rx_bytes=n[0],
                rx_packets=n[1],
                rx_errors=n[2],
                rx_dropped=n[3],
                tx_bytes=n[8],
                tx_packets=n[9],
                tx_errors=n[10],
                tx_dropped=n[11],
            )
        )
    return interfaces


def _pod_interfaces(interfaces: Iterable[InterfaceStats]) -> list[InterfaceStats]:
    """Every interface but loopback, which the kubelet (and cAdvisor) never count."""
    return [i for i in interfaces if i.name != _LOOPBACK]


# ---------------------------------------------------------------------------- CRI stats


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=min(max(value, 0), _U64_MAX))


def _psi(p: Pressure) -> api_pb2.PsiStats:
    def line(d: PressureData) -> api_pb2.PsiData:
        return api_pb2.PsiData(Total=d.total_ns, Avg10=d.avg10, Avg60=d.avg60, Avg300=d.avg300)

    out = api_pb2.PsiStats()
    if p.some is not None:
        out.Some.CopyFrom(line(p.some))
    if p.full is not None:
        out.Full.CopyFrom(line(p.full))
    return out


def _cpu_usage(sample: CgroupSample, usage_nano_cores: int | None) -> api_pb2.CpuUsage:
    cpu = api_pb2.CpuUsage(
        timestamp=sample.timestamp_ns, usage_core_nano_seconds=_u64(sample.cpu_usage_ns)
    )
    if usage_nano_cores is not None:
        cpu.usage_nano_cores.value = usage_nano_cores
    if sample.cpu_pressure is not None:
        cpu.psi.CopyFrom(_psi(sample.cpu_pressure))
    return cpu


def _memory_usage(sample: CgroupSample) -> api_pb2.MemoryUsage:
    memory = api_pb2.MemoryUsage(
        timestamp=sample.timestamp_ns,
        working_set_bytes=_u64(sample.memory_working_set_bytes),
        available_bytes=_u64(sample.available_bytes),
        usage_bytes=_u64(sample.memory_usage_bytes),
        rss_bytes=_u64(sample.rss_bytes),
        page_faults=_u64(sample.page_faults),
        major_page_faults=_u64(sample.major_page_faults),
    )
    if sample.memory_pressure is not None:
        memory.psi.CopyFrom(_psi(sample.memory_pressure))
    return memory


def container_stats(
    attributes: ContainerAttributes,
    sample: CgroupSample | None,
    *,
    usage_nano_cores: int | None,
    writable_layer_bytes: int,
    writable_layer_inodes: int,
    fs_mountpoint: str,
    fs_timestamp_ns: int | None = None,
) -> api_pb2.ContainerStats:
    """One container's CRI stats.

    Without a sample (no task) only the attributes and the writable layer are filled, as
    containerd answers for a created or exited container. `usage_nano_cores` None leaves
    the field unset; pass `nano_cores(...)` to fill it. `fs_mountpoint` is the image
    filesystem the writable layer lives on (ImageFsInfo's mountpoint), which the kubelet
    matches the two by; the layer's timestamp defaults to the sample's.
    """
    if fs_timestamp_ns is None:
        fs_timestamp_ns = sample.timestamp_ns if sample is not None else time.time_ns()
    stats = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=attributes.id,
            metadata=api_pb2.ContainerMetadata(name=attributes.name, attempt=attributes.attempt),
            labels=dict(attributes.labels),
            annotations=dict(attributes.annotations),
        ),
        writable_layer=api_pb2.FilesystemUsage(
            timestamp=fs_timestamp_ns,
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=fs_mountpoint),
            used_bytes=_u64(writable_layer_bytes),
            inodes_used=_u64(writable_layer_inodes),
        ),
    )
    if sample is None:
        return stats
    if sample.has_cpu:
        stats.cpu.CopyFrom(_cpu_usage(sample, usage_nano_cores))
    if sample.has_memory:
        stats.memory.CopyFrom(_memory_usage(sample))
        if sample.swap_usage_bytes is not None:
            stats.swap.timestamp = sample.timestamp_ns
            stats.swap.swap_usage_bytes.value = sample.swap_usage_bytes
            if sample.swap_limit_bytes is not None:
                stats.swap.swap_available_bytes.value = max(
                    sample.swap_limit_bytes - sample.swap_usage_bytes, 0
                )
    if sample.io_pressure is not None:
        stats.io.timestamp = sample.timestamp_ns
        stats.io.psi.CopyFrom(_psi(sample.io_pressure))
    return stats


def _interface_usage(i: InterfaceStats) -> api_pb2.NetworkInterfaceUsage:
    return api_pb2.NetworkInterfaceUsage(
        name=i.name,
        rx_bytes=_u64(i.rx_bytes),
        rx_errors=_u64(i.rx_errors),
        tx_bytes=_u64(i.tx_bytes),
        tx_errors=_u64(i.tx_errors),
    )


def network_usage(interfaces: Iterable[InterfaceStats], timestamp_ns: int) -> api_pb2.NetworkUsage:
    """The pod's NetworkUsage as the kubelet reads it.

    `interfaces` lists every interface but `lo`, the default one included (the kubelet's
    `Interfaces` means "all found", as cAdvisor fills it, and containerd sends it so);
    `default_interface` is eth0, or the first interface when the pod has no eth0.
    """
    usage = api_pb2.NetworkUsage(timestamp=timestamp_ns)
    found = _pod_interfaces(interfaces)
    for i in found:
        usage.interfaces.append(_interface_usage(i))
    default = next((i for i in found if i.name == DEFAULT_INTERFACE), found[0] if found else None)
    if default is not None:
        usage.default_interface.CopyFrom(_interface_usage(default))
    return usage


def pod_sandbox_stats(
    attributes: PodAttributes,
    sample: CgroupSample | None,
    *,
    usage_nano_cores: int | None,
    containers: Sequence[api_pb2.ContainerStats],
    process_count: int,
    interfaces: Iterable[InterfaceStats] | None,
    timestamp_ns: int | None = None,
) -> api_pb2.PodSandboxStats:
    """One pod's CRI stats: the pod cgroup's CPU and memory, network, processes, containers.

    `process_count` is the sum of the containers' `pids` (containerd counts the pod's
    processes so, leaving the pause process out). `interfaces` is None for a pod on the
    host network, which has no network stats of its own. `timestamp_ns` stamps the
    network and process figures; it defaults to the sample's time, else now.
    """
    if timestamp_ns is None:
        timestamp_ns = sample.timestamp_ns if sample is not None else time.time_ns()
    stats = api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=attributes.id,
            metadata=api_pb2.PodSandboxMetadata(
                name=attributes.name,
                uid=attributes.uid,
                namespace=attributes.namespace,
                attempt=attributes.attempt,
            ),
            labels=dict(attributes.labels),
            annotations=dict(attributes.annotations),
        ),
        linux=api_pb2.LinuxPodSandboxStats(
            process=api_pb2.ProcessUsage(timestamp=timestamp_ns, process_count=_u64(process_count)),
            containers=containers,
        ),
    )
    linux = stats.linux
    if sample is not None and sample.has_cpu:
        linux.cpu.CopyFrom(_cpu_usage(sample, usage_nano_cores))
    if sample is not None and sample.has_memory:
        linux.memory.CopyFrom(_memory_usage(sample))
    if sample is not None and sample.io_pressure is not None:
        linux.io.timestamp = sample.timestamp_ns
        linux.io.psi.CopyFrom(_psi(sample.io_pressure))
    if interfaces is not None:
        linux.network.CopyFrom(network_usage(interfaces, timestamp_ns))
    return stats


# ---------------------------------------------------------------------------- CRI metrics

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
# Writable layer.
_FS_USAGE = _gauge(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    "device",
)
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
    _MEMORY_FAILCNT,
    _MEMORY_ACTIVE_FILE,
    _MEMORY_INACTIVE_FILE,
    _MEMORY_FAILURES,
    _OOM_EVENTS,
    _FS_READS_BYTES,
    _FS_WRITES_BYTES,
    _FS_READS,
    _FS_WRITES,
    _FS_USAGE,
    _NET_RX_BYTES,
    _NET_RX_PACKETS,
    _NET_RX_DROPPED,
    _NET_RX_ERRORS,
    _NET_TX_BYTES,
    _NET_TX_PACKETS,
    _NET_TX_DROPPED,
    _NET_TX_ERRORS,
    _PROCESSES,
    _THREADS,
    _THREADS_MAX,
    _LAST_SEEN,
    _START_TIME,
    _SPEC_MEMORY_LIMIT,
    _SPEC_MEMORY_RESERVATION,
    _SPEC_CPU_SHARES,
    _SPEC_CPU_PERIOD,
    _SPEC_CPU_QUOTA,
)


def metric_descriptors() -> list[api_pb2.MetricDescriptor]:
    """ListMetricDescriptors: every metric `pod_sandbox_metrics` may send, with its labels.

    The kubelet (PodAndContainerStatsFromCRI) reads these once and drops any metric
    whose name is not among them, so the two must stay in step. The set is cAdvisor's
    names that cgroup metrics, net/dev and the container record can fill honestly; left
    out: per-CPU usage, hugetlb, file descriptors and sockets, ulimits, fs limits and
    inodes (each needs a per-process or statfs walk criproxy does not do).
    """
    return [
        api_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys)
        for d in _DESCRIPTORS
    ]


@dataclass(frozen=True)
class ContainerMetricsInput:
    """One container's inputs to ListPodSandboxMetrics, gathered by the caller."""

    id: str
    name: str
    image: str
    """The image as the user asked for it (containerd's `UserSpecifiedImage`)."""
    sample: CgroupSample | None
    """None when the container has no task: then only record-derived metrics are sent."""
    started_at_ns: int = 0
    writable_layer_bytes: int | None = None
    fs_device: str = ""
    """The `device` label of container_fs_usage_bytes: the image filesystem's mountpoint."""
    cpu_shares: int | None = None
    cpu_period: int | None = None
    cpu_quota: int | None = None
    memory_reservation_bytes: int | None = None
    """From the OCI spec's Linux resources; None when not set (the metric is then omitted)."""


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
                value=_u64(value),
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
    for desc, spec in (
        (_SPEC_CPU_SHARES, c.cpu_shares),
        (_SPEC_CPU_PERIOD, c.cpu_period),
        (_SPEC_CPU_QUOTA, c.cpu_quota),
        (_SPEC_MEMORY_RESERVATION, c.memory_reservation_bytes),
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
    for io in s.block_io:
        out.add(_FS_READS_BYTES, io.read_bytes, io.device)
        out.add(_FS_WRITES_BYTES, io.write_bytes, io.device)
        out.add(_FS_READS, io.reads, io.device)
        out.add(_FS_WRITES, io.writes, io.device)


def pod_sandbox_metrics(
    sandbox_id: str,
    pod_name: str,
    namespace: str,
    *,
    interfaces: Iterable[InterfaceStats] | None,
    containers: Sequence[ContainerMetricsInput],
    timestamp_ns: int | None = None,
) -> api_pb2.PodSandboxMetrics:
    """ListPodSandboxMetrics for one pod: network at pod level, the rest per container.

    Pod-level metrics carry an empty container and image, as containerd sends them. Every
    interface but `lo` is reported (cAdvisor's set); `interfaces` None (host network) sends
    none. `timestamp_ns` stamps the pod-level metrics, defaulting to now.
    """
    ts = time.time_ns() if timestamp_ns is None else timestamp_ns
    out = _Emitter((pod_name, namespace, "", sandbox_id, ""), ts)
    for i in _pod_interfaces(interfaces or ()):
        out.add(_NET_RX_BYTES, i.rx_bytes, i.name)
        out.add(_NET_RX_PACKETS, i.rx_packets, i.name)
        out.add(_NET_RX_DROPPED, i.rx_dropped, i.name)
        out.add(_NET_RX_ERRORS, i.rx_errors, i.name)
        out.add(_NET_TX_BYTES, i.tx_bytes, i.name)
        out.add(_NET_TX_PACKETS, i.tx_packets, i.name)
        out.add(_NET_TX_DROPPED, i.tx_dropped, i.name)
        out.add(_NET_TX_ERRORS, i.tx_errors, i.name)
    return api_pb2.PodSandboxMetrics(
        pod_sandbox_id=sandbox_id,
        metrics=out.metrics,
        container_metrics=[
            container_metrics(
                pod_name,
                namespace,
                c,
                timestamp_ns=c.sample.timestamp_ns if c.sample is not None else ts,
            )
            for c in containers
        ],
    )
