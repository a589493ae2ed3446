"""containerd's cgroup v1 and v2 task metrics decoded into one CgroupSample, with
containerd's arithmetic."""

from __future__ import annotations

import pytest

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.containerd.cgroups.v2 import metrics_pb2 as cg2
from criproxy.errors import Internal
from criproxy.stats import BlockIo, CgroupSample, Pressure, PressureData, decode_metrics
from tests.support.stats import GIB, TS, V1, V1_UNLIMITED, V2, V2_MAX, v1_metrics, v2_metrics

PSI = Pressure(
    some=PressureData(total_ns=1_000_000, avg10=1.5, avg60=0.5, avg300=0.25),
    full=PressureData(total_ns=400_000, avg10=0.5, avg60=0.25, avg300=0.125),
)


def test_cgroup_v1_metrics_decode_field_by_field() -> None:
    sample = decode_metrics(V1, v1_metrics().SerializeToString(), timestamp_ns=TS)
    assert sample == CgroupSample(
        timestamp_ns=TS,
        cgroup_version=1,
        has_cpu=True,
        cpu_usage_ns=5_500_000_000,
        cpu_user_ns=4_000_000_000,
        cpu_system_ns=1_000_000_000,
        cpu_periods=100,
        cpu_throttled_periods=3,
        cpu_throttled_ns=2_500_000_000,
        has_memory=True,
        memory_usage_bytes=5000,
        memory_working_set_bytes=4900,  # usage - total_inactive_file
        memory_limit_bytes=GIB,
        available_bytes=GIB - 4900,
        rss_bytes=4000,
        cache_bytes=300,
        mapped_file_bytes=50,
        active_file_bytes=200,
        inactive_file_bytes=100,
        max_usage_bytes=6000,
        kernel_usage_bytes=640,
        failcnt=2,
        page_faults=111,
        major_page_faults=5,
        container_page_faults=11,
        container_major_page_faults=1,
        swap_usage_bytes=800,  # memsw 5800 - memory 5000
        swap_limit_bytes=512,  # memsw limit - memory limit
        oom_kills=1,
        pids=7,
        pids_limit=1024,
        block_io=(BlockIo("/dev/sda", 8, 0, read_bytes=4096, write_bytes=8192, reads=3, writes=4),),
    )


def test_cgroup_v2_metrics_decode_field_by_field() -> None:
    sample = decode_metrics(V2, v2_metrics().SerializeToString(), timestamp_ns=TS)
    assert sample == CgroupSample(
        timestamp_ns=TS,
        cgroup_version=2,
        has_cpu=True,
        cpu_usage_ns=2_000_000_000,
        cpu_user_ns=1_500_000_000,
        cpu_system_ns=500_000_000,
        cpu_periods=40,
        cpu_throttled_periods=2,
        cpu_throttled_ns=1_000_000_000,
        has_memory=True,
        memory_usage_bytes=2000,
        memory_working_set_bytes=1600,  # usage - inactive_file
        memory_limit_bytes=None,
        available_bytes=0,
        rss_bytes=700,
        cache_bytes=900,
        mapped_file_bytes=60,
        active_file_bytes=500,
        inactive_file_bytes=400,
        max_usage_bytes=2500,
        kernel_usage_bytes=32 + 64 + 16,
        failcnt=6,
        page_faults=22,
        major_page_faults=3,
        container_page_faults=22,
        container_major_page_faults=3,
        swap_usage_bytes=128,
        swap_limit_bytes=1024,
        oom_kills=2,
        pids=4,
        pids_limit=0,
        block_io=(BlockIo("259:0", 259, 0, read_bytes=10, write_bytes=20, reads=1, writes=2),),
        cpu_pressure=PSI,
        memory_pressure=PSI,
        io_pressure=PSI,
    )


def test_type_url_is_matched_by_its_last_path_element() -> None:
    raw = v1_metrics().SerializeToString()
    plain = decode_metrics(V1, raw, timestamp_ns=TS)
    assert decode_metrics(f"type.googleapis.com/{V1}", raw, timestamp_ns=TS) == plain
    assert decode_metrics("io.containerd.cgroups.v2.Metrics", b"", timestamp_ns=TS) == (
        CgroupSample(timestamp_ns=TS, cgroup_version=2)
    )


def test_sample_without_a_timestamp_is_stamped_now() -> None:
    import time

    before = time.time_ns()
    sample = decode_metrics(V1, b"")
    assert before <= sample.timestamp_ns <= time.time_ns()


def test_unknown_or_corrupt_metrics_are_internal_errors() -> None:
    with pytest.raises(Internal, match="unexpected task metrics type"):
        decode_metrics("type.googleapis.com/io.containerd.windows.Statistics", b"")
    with pytest.raises(Internal, match="undecodable"):
        decode_metrics(V1, b"\xff\xff\xff")


@pytest.mark.parametrize("version", [1, 2])
def test_working_set_floors_at_zero_when_inactive_file_exceeds_usage(version: int) -> None:
    if version == 1:
        m1 = cg1.Metrics(
            memory=cg1.MemoryStat(
                total_inactive_file=9000, usage=cg1.MemoryEntry(usage=5000, limit=GIB)
            )
        )
        raw, url = m1.SerializeToString(), V1
    else:
        m2 = cg2.Metrics(memory=cg2.MemoryStat(inactive_file=9000, usage=5000, usage_limit=GIB))
        raw, url = m2.SerializeToString(), V2
    sample = decode_metrics(url, raw, timestamp_ns=TS)
    assert sample.memory_working_set_bytes == 0
    assert sample.available_bytes == GIB


@pytest.mark.parametrize("version", [1, 2])
def test_available_bytes_floor_at_zero_above_the_limit(version: int) -> None:
    # A cgroup can briefly sit above a lowered limit; Go's uint64 would wrap, we give 0.
    if version == 1:
        m1 = cg1.Metrics(memory=cg1.MemoryStat(usage=cg1.MemoryEntry(usage=2000, limit=1000)))
        raw, url = m1.SerializeToString(), V1
    else:
        m2 = cg2.Metrics(memory=cg2.MemoryStat(usage=2000, usage_limit=1000))
        raw, url = m2.SerializeToString(), V2
    sample = decode_metrics(url, raw, timestamp_ns=TS)
    assert (sample.memory_working_set_bytes, sample.available_bytes) == (2000, 0)


def test_no_memory_limit_reads_as_none_and_zero_available() -> None:
    m = cg1.Metrics(memory=cg1.MemoryStat(usage=cg1.MemoryEntry(usage=10, limit=V1_UNLIMITED)))
    sample = decode_metrics(V1, m.SerializeToString(), timestamp_ns=TS)
    assert (sample.memory_limit_bytes, sample.available_bytes) == (None, 0)


def test_cgroup_v2_swap_max_of_zero_is_a_limit_and_max_is_none() -> None:
    m = v2_metrics()
    m.memory.swap_limit = 0
    assert decode_metrics(V2, m.SerializeToString()).swap_limit_bytes == 0
    m.memory.swap_limit = V2_MAX
    assert decode_metrics(V2, m.SerializeToString()).swap_limit_bytes is None
