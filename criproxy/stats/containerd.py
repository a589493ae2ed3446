"""A CgroupSample from containerd's task metrics: `tasks.Metrics` answers one `types.Metric`
per task, its `data` an `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`.

Nothing here calls containerd; the sampler fetches, this decodes. The one cgroup-version
switch lives in `decode_metrics`.
"""

from __future__ import annotations

import time
from dataclasses import replace

from google.protobuf.message import DecodeError

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.containerd.cgroups.v2 import metrics_pb2 as cg2
from criproxy.errors import Internal
from criproxy.stats.sample import (
    UNLIMITED_ABOVE,
    BlockIo,
    CgroupSample,
    Pressure,
    PressureData,
    available_bytes,
    fold_v1_block_io,
    limit_or_none,
    working_set,
)

__all__ = ["decode_metrics"]

_V1_TYPE = "io.containerd.cgroups.v1.Metrics"
_V2_TYPE = "io.containerd.cgroups.v2.Metrics"
_NS_PER_USEC = 1_000


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
            kernel_usage_bytes=mem.kernel.usage,
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
    entries = [*blkio.io_service_bytes_recursive, *blkio.io_serviced_recursive]
    names: dict[tuple[int, int], str] = {}
    for e in entries:
        names.setdefault((e.major, e.minor), e.device or f"{e.major}:{e.minor}")
    return fold_v1_block_io(
        [(e.major, e.minor, e.op, e.value) for e in blkio.io_service_bytes_recursive],
        [(e.major, e.minor, e.op, e.value) for e in blkio.io_serviced_recursive],
        lambda major, minor: names[(major, minor)],
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
            kernel_usage_bytes=mem.kernel_stack + mem.sock + mem.slab,  # the parts it carries
            page_faults=mem.pgfault,
            major_page_faults=mem.pgmajfault,
            container_page_faults=mem.pgfault,
            container_major_page_faults=mem.pgmajfault,
            swap_usage_bytes=mem.swap_usage,
            # memory.swap.max may truly be 0 (the kubelet's NoSwap), so 0 is a limit here.
            swap_limit_bytes=mem.swap_limit if mem.swap_limit <= UNLIMITED_ABOVE else None,
            memory_pressure=_pressure(mem.psi) if mem.HasField("psi") else None,
        )
    if m.HasField("memory_events"):
        s = replace(s, oom_kills=m.memory_events.oom_kill, failcnt=m.memory_events.max)
    if m.HasField("pids"):
        # v2's pids.max `max` comes as 2**64-1; the sample says 0 for "no limit" (as v1)
        limit = m.pids.limit if m.pids.limit <= UNLIMITED_ABOVE else 0
        s = replace(s, pids=m.pids.current, pids_limit=limit)
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
