"""Inputs of the stats tests: containerd's cgroup v1 and v2 task metrics, filled field by
field, and a /proc/<pid>/net/dev as the kernel writes it."""

from __future__ import annotations

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.containerd.cgroups.v2 import metrics_pb2 as cg2
from criproxy.stats import CgroupSample, decode_metrics

V1 = "io.containerd.cgroups.v1.Metrics"
V2 = "type.googleapis.com/io.containerd.cgroups.v2.Metrics"
TS = 1_700_000_000_123_456_789
GIB = 1 << 30
V1_UNLIMITED = 9223372036854771712  # memory.limit_in_bytes with no limit set
V2_MAX = (1 << 64) - 1  # "max", as containerd's cgroups library reads it


def v1_metrics() -> cg1.Metrics:
    return cg1.Metrics(
        pids=cg1.PidsStat(current=7, limit=1024),
        cpu=cg1.CPUStat(
            usage=cg1.CPUUsage(total=5_500_000_000, kernel=1_000_000_000, user=4_000_000_000),
            throttling=cg1.Throttle(periods=100, throttled_periods=3, throttled_time=2_500_000_000),
        ),
        memory=cg1.MemoryStat(
            pg_fault=11,
            pg_maj_fault=1,
            total_cache=300,
            total_rss=4000,
            total_mapped_file=50,
            total_pg_fault=111,
            total_pg_maj_fault=5,
            total_active_file=200,
            total_inactive_file=100,
            usage=cg1.MemoryEntry(limit=GIB, usage=5000, max=6000, failcnt=2),
            kernel=cg1.MemoryEntry(usage=640),
            swap=cg1.MemoryEntry(limit=GIB + 512, usage=5800),
        ),
        blkio=cg1.BlkIOStat(
            io_service_bytes_recursive=[
                cg1.BlkIOEntry(op="Read", device="/dev/sda", major=8, minor=0, value=4096),
                cg1.BlkIOEntry(op="Write", device="/dev/sda", major=8, minor=0, value=8192),
                cg1.BlkIOEntry(op="Total", device="/dev/sda", major=8, minor=0, value=12288),
            ],
            io_serviced_recursive=[
                cg1.BlkIOEntry(op="Read", device="/dev/sda", major=8, minor=0, value=3),
                cg1.BlkIOEntry(op="Write", device="/dev/sda", major=8, minor=0, value=4),
            ],
        ),
        memory_oom_control=cg1.MemoryOomControl(oom_kill=1),
    )


def v2_metrics() -> cg2.Metrics:
    psi = cg2.PSIStats(
        some=cg2.PSIData(avg10=1.5, avg60=0.5, avg300=0.25, total=1000),
        full=cg2.PSIData(avg10=0.5, avg60=0.25, avg300=0.125, total=400),
    )
    return cg2.Metrics(
        pids=cg2.PidsStat(current=4, limit=0),
        cpu=cg2.CPUStat(
            usage_usec=2_000_000,
            user_usec=1_500_000,
            system_usec=500_000,
            nr_periods=40,
            nr_throttled=2,
            throttled_usec=1_000_000,
            psi=psi,
        ),
        memory=cg2.MemoryStat(
            anon=700,
            file=900,
            kernel_stack=32,
            slab=64,
            sock=16,
            file_mapped=60,
            active_file=500,
            inactive_file=400,
            pgfault=22,
            pgmajfault=3,
            usage=2000,
            usage_limit=V2_MAX,
            swap_usage=128,
            swap_limit=1024,
            max_usage=2500,
            psi=psi,
        ),
        io=cg2.IOStat(
            usage=[cg2.IOEntry(major=259, minor=0, rbytes=10, wbytes=20, rios=1, wios=2)],
            psi=psi,
        ),
        memory_events=cg2.MemoryEvents(max=6, oom_kill=2),
    )


# /proc/<pid>/net/dev as the kernel writes it; net1's receive bytes run into the colon.
NET_DEV = "\n".join(
    [
        "Inter-|   Receive                                                |  Transmit",
        " face |bytes    packets errs drop fifo frame compressed multicast|"
        "bytes    packets errs drop fifo colls carrier compressed",
        "    lo:   11540     140    0    0    0     0          0         0"
        "    11540     140    0    0    0     0       0          0",
        "  eth0: 9876543    6543    2    1    0     0          0        12"
        "  1234567    4321    3    4    0     0       0          0",
        "  net1:1000000000  100    5    6    0     0          0         0"
        "      300       7    8    9    0     0       0          0",
        "",
    ]
)


def v1_sample() -> CgroupSample:
    return decode_metrics(V1, v1_metrics().SerializeToString(), timestamp_ns=TS)


def v2_sample() -> CgroupSample:
    return decode_metrics(V2, v2_metrics().SerializeToString(), timestamp_ns=TS)
