"""Stats: containerd's cgroup metrics to CRI stats and metrics, with containerd's arithmetic."""

from __future__ import annotations

import pytest

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.containerd.cgroups.v2 import metrics_pb2 as cg2
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containers.stats import (
    BASE_LABEL_KEYS,
    BlockIo,
    CgroupSample,
    ContainerAttributes,
    ContainerMetricsInput,
    InterfaceStats,
    PodAttributes,
    Pressure,
    PressureData,
    container_stats,
    decode_metrics,
    metric_descriptors,
    nano_cores,
    network_usage,
    pod_sandbox_metrics,
    pod_sandbox_stats,
    read_net_dev,
)
from criproxy.errors import Internal

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


def test_cgroup_v1_without_swap_accounting_has_no_swap() -> None:
    m = v1_metrics()
    m.memory.ClearField("swap")
    sample = decode_metrics(V1, m.SerializeToString(), timestamp_ns=TS)
    assert (sample.swap_usage_bytes, sample.swap_limit_bytes) == (None, None)
    stats = container_stats(
        ContainerAttributes("c1", "app"),
        sample,
        usage_nano_cores=None,
        writable_layer_bytes=0,
        writable_layer_inodes=0,
        fs_mountpoint="/",
    )
    assert not stats.HasField("swap")


def test_cgroup_v2_swap_max_of_zero_is_a_limit_and_max_is_none() -> None:
    m = v2_metrics()
    m.memory.swap_limit = 0
    assert decode_metrics(V2, m.SerializeToString()).swap_limit_bytes == 0
    m.memory.swap_limit = V2_MAX
    assert decode_metrics(V2, m.SerializeToString()).swap_limit_bytes is None


def test_absent_controllers_leave_their_groups_unset() -> None:
    sample = decode_metrics(V1, cg1.Metrics(pids=cg1.PidsStat(current=2)).SerializeToString())
    assert (sample.has_cpu, sample.has_memory, sample.pids) == (False, False, 2)
    stats = container_stats(
        ContainerAttributes("c1", "app"),
        sample,
        usage_nano_cores=5,
        writable_layer_bytes=0,
        writable_layer_inodes=0,
        fs_mountpoint="/",
    )
    for group in ("cpu", "memory", "swap", "io"):
        assert not stats.HasField(group)


def test_nano_cores_is_cpu_time_over_wall_time() -> None:
    first = CgroupSample(timestamp_ns=TS, cgroup_version=2, cpu_usage_ns=1_000_000_000)
    # 0.5 s of CPU over 2 s of wall time: a quarter of a core.
    second = CgroupSample(
        timestamp_ns=TS + 2_000_000_000, cgroup_version=2, cpu_usage_ns=1_500_000_000
    )
    assert nano_cores(first, second) == 250_000_000
    # Two busy cores.
    third = CgroupSample(
        timestamp_ns=TS + 3_000_000_000, cgroup_version=2, cpu_usage_ns=3_500_000_000
    )
    assert nano_cores(second, third) == 2_000_000_000


def test_nano_cores_is_zero_without_a_usable_previous_sample() -> None:
    now = CgroupSample(timestamp_ns=TS, cgroup_version=1, cpu_usage_ns=10)
    assert nano_cores(None, now) == 0
    assert nano_cores(now, now) == 0  # zero interval
    later_but_reset = CgroupSample(timestamp_ns=TS + 1, cgroup_version=1, cpu_usage_ns=5)
    assert nano_cores(now, later_but_reset) == 0  # counter went backwards
    earlier = CgroupSample(timestamp_ns=TS - 1, cgroup_version=1, cpu_usage_ns=20)
    assert nano_cores(now, earlier) == 0  # negative interval


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


def test_net_dev_parses_every_interface_counter() -> None:
    assert read_net_dev(NET_DEV) == [
        InterfaceStats("lo", 11540, 140, 0, 0, 11540, 140, 0, 0),
        InterfaceStats("eth0", 9876543, 6543, 2, 1, 1234567, 4321, 3, 4),
        InterfaceStats("net1", 1000000000, 100, 5, 6, 300, 7, 8, 9),
    ]


def test_net_dev_rejects_a_malformed_line() -> None:
    lines = NET_DEV.splitlines()
    with pytest.raises(Internal, match="net/dev"):
        read_net_dev("\n".join([*lines[:2], "  eth0: 1 2 3"]))
    with pytest.raises(Internal, match="net/dev"):
        read_net_dev("\n".join([*lines[:2], "  eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16"]))


def test_this_machines_net_dev_parses() -> None:
    with open("/proc/self/net/dev") as f:
        interfaces = read_net_dev(f.read())
    assert interfaces
    assert all(i.name and ":" not in i.name and i.rx_bytes >= 0 for i in interfaces)


def test_network_usage_defaults_to_eth0_lists_all_but_lo() -> None:
    usage = network_usage(read_net_dev(NET_DEV), TS)
    assert usage.timestamp == TS
    d = usage.default_interface
    assert (d.name, d.rx_bytes.value, d.rx_errors.value, d.tx_bytes.value, d.tx_errors.value) == (
        "eth0",
        9876543,
        2,
        1234567,
        3,
    )
    assert [i.name for i in usage.interfaces] == ["eth0", "net1"]
    net1 = usage.interfaces[1]
    assert (net1.rx_bytes.value, net1.rx_errors.value) == (1000000000, 5)
    assert (net1.tx_bytes.value, net1.tx_errors.value) == (300, 8)


def test_network_usage_without_eth0_defaults_to_the_first_interface() -> None:
    usage = network_usage(
        [InterfaceStats("lo"), InterfaceStats("net1"), InterfaceStats("net2")], TS
    )
    assert usage.default_interface.name == "net1"
    assert not network_usage([InterfaceStats("lo")], TS).HasField("default_interface")


def _v1_sample() -> CgroupSample:
    return decode_metrics(V1, v1_metrics().SerializeToString(), timestamp_ns=TS)


def _v2_sample() -> CgroupSample:
    return decode_metrics(V2, v2_metrics().SerializeToString(), timestamp_ns=TS)


def test_container_stats_fill_cris_fields() -> None:
    attrs = ContainerAttributes("c1", "app", 3, {"l": "1"}, {"a": "2"})
    stats = container_stats(
        attrs,
        _v1_sample(),
        usage_nano_cores=123,
        writable_layer_bytes=4096,
        writable_layer_inodes=12,
        fs_mountpoint="/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
    )
    assert stats.attributes == api_pb2.ContainerAttributes(
        id="c1",
        metadata=api_pb2.ContainerMetadata(name="app", attempt=3),
        labels={"l": "1"},
        annotations={"a": "2"},
    )
    assert stats.cpu.timestamp == TS
    assert stats.cpu.usage_core_nano_seconds.value == 5_500_000_000
    assert stats.cpu.usage_nano_cores.value == 123
    assert not stats.cpu.HasField("psi")
    m = stats.memory
    assert m.timestamp == TS
    assert (m.working_set_bytes.value, m.available_bytes.value, m.usage_bytes.value) == (
        4900,
        GIB - 4900,
        5000,
    )
    assert (m.rss_bytes.value, m.page_faults.value, m.major_page_faults.value) == (4000, 111, 5)
    assert (stats.swap.timestamp, stats.swap.swap_usage_bytes.value) == (TS, 800)
    assert stats.swap.swap_available_bytes.value == 0  # 800 used of 512 allowed: floored
    w = stats.writable_layer
    assert (w.timestamp, w.used_bytes.value, w.inodes_used.value) == (TS, 4096, 12)
    assert w.fs_id.mountpoint == "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
    assert not stats.HasField("io")  # no PSI on cgroup v1


def test_container_stats_carry_cgroup_v2_pressure_and_swap_headroom() -> None:
    stats = container_stats(
        ContainerAttributes("c2", "app"),
        _v2_sample(),
        usage_nano_cores=None,
        writable_layer_bytes=0,
        writable_layer_inodes=0,
        fs_mountpoint="/",
    )
    assert not stats.cpu.HasField("usage_nano_cores")
    psi = api_pb2.PsiStats(
        Some=api_pb2.PsiData(Total=1_000_000, Avg10=1.5, Avg60=0.5, Avg300=0.25),
        Full=api_pb2.PsiData(Total=400_000, Avg10=0.5, Avg60=0.25, Avg300=0.125),
    )
    assert stats.cpu.psi == psi
    assert stats.memory.psi == psi
    assert (stats.io.timestamp, stats.io.psi) == (TS, psi)
    assert stats.memory.available_bytes.value == 0  # no limit: 0, as containerd sends
    assert stats.swap.swap_available_bytes.value == 1024 - 128


def test_container_stats_without_a_task_have_attributes_and_writable_layer_only() -> None:
    stats = container_stats(
        ContainerAttributes("c3", "app"),
        None,
        usage_nano_cores=None,
        writable_layer_bytes=10,
        writable_layer_inodes=1,
        fs_mountpoint="/",
        fs_timestamp_ns=TS,
    )
    assert stats.attributes.id == "c3"
    assert stats.writable_layer.timestamp == TS
    assert stats.writable_layer.used_bytes.value == 10
    for group in ("cpu", "memory", "swap", "io"):
        assert not stats.HasField(group)


def test_pod_sandbox_stats_fill_cris_fields() -> None:
    container = container_stats(
        ContainerAttributes("c1", "app"),
        _v1_sample(),
        usage_nano_cores=1,
        writable_layer_bytes=0,
        writable_layer_inodes=0,
        fs_mountpoint="/",
    )
    pod = PodAttributes("p1", "web", "uid-1", "default", 1, {"app": "web"}, {"k": "v"})
    stats = pod_sandbox_stats(
        pod,
        _v2_sample(),
        usage_nano_cores=77,
        containers=[container],
        process_count=7,
        interfaces=read_net_dev(NET_DEV),
        timestamp_ns=TS + 5,
    )
    assert stats.attributes == api_pb2.PodSandboxAttributes(
        id="p1",
        metadata=api_pb2.PodSandboxMetadata(
            name="web", uid="uid-1", namespace="default", attempt=1
        ),
        labels={"app": "web"},
        annotations={"k": "v"},
    )
    linux = stats.linux
    assert linux.cpu.usage_core_nano_seconds.value == 2_000_000_000
    assert linux.cpu.usage_nano_cores.value == 77
    assert linux.memory.working_set_bytes.value == 1600
    assert linux.io.psi.Some.Total == 1_000_000
    assert linux.network.timestamp == TS + 5
    assert linux.network.default_interface.name == "eth0"
    assert [i.name for i in linux.network.interfaces] == ["eth0", "net1"]
    assert (linux.process.timestamp, linux.process.process_count.value) == (TS + 5, 7)
    assert list(linux.containers) == [container]
    assert not stats.HasField("windows")


def test_pod_on_the_host_network_has_no_network_stats() -> None:
    stats = pod_sandbox_stats(
        PodAttributes("p1", "web", "uid", "default"),
        None,
        usage_nano_cores=None,
        containers=[],
        process_count=0,
        interfaces=None,
        timestamp_ns=TS,
    )
    assert not stats.linux.HasField("network")
    assert not stats.linux.HasField("cpu")
    assert stats.linux.process.process_count.value == 0


def test_metric_descriptors_are_unique_and_carry_cadvisors_labels() -> None:
    descriptors = {d.name: d for d in metric_descriptors()}
    assert len(descriptors) == len(metric_descriptors())
    assert all(d.help for d in descriptors.values())
    assert all(tuple(d.label_keys[:5]) == BASE_LABEL_KEYS for d in descriptors.values())
    assert BASE_LABEL_KEYS == ("pod", "namespace", "container", "id", "image")
    assert list(descriptors["container_network_receive_bytes_total"].label_keys)[5:] == [
        "interface"
    ]
    assert list(descriptors["container_memory_failures_total"].label_keys)[5:] == [
        "failure_type",
        "scope",
    ]
    assert list(descriptors["container_fs_reads_bytes_total"].label_keys)[5:] == ["device"]
    for name in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_processes",
        "container_spec_memory_limit_bytes",
    ):
        assert list(descriptors[name].label_keys) == list(BASE_LABEL_KEYS) + (
            ["interface"] if "network" in name else []
        )


def _by_labels(metrics: list[api_pb2.Metric]) -> dict[tuple[str, ...], api_pb2.Metric]:
    return {(m.name, *m.label_values): m for m in metrics}


def _pod_metrics() -> api_pb2.PodSandboxMetrics:
    containers = [
        ContainerMetricsInput(
            id="c1",
            name="app",
            image="docker.io/library/nginx:1",
            sample=_v1_sample(),
            started_at_ns=1_600_000_000_900_000_000,
            writable_layer_bytes=4096,
            fs_device="/var/lib/containerd",
            cpu_shares=1024,
            cpu_period=100_000,
            cpu_quota=50_000,
            memory_reservation_bytes=None,
        ),
        ContainerMetricsInput(id="c2", name="side", image="busybox", sample=_v2_sample()),
        ContainerMetricsInput(id="c3", name="gone", image="busybox", sample=None),
    ]
    return pod_sandbox_metrics(
        "p1",
        "web",
        "default",
        interfaces=read_net_dev(NET_DEV),
        containers=containers,
        timestamp_ns=TS,
    )


def test_every_pod_metric_matches_its_descriptor() -> None:
    descriptors = {d.name: d for d in metric_descriptors()}
    pod = _pod_metrics()
    assert pod.pod_sandbox_id == "p1"
    everything = [*pod.metrics, *(m for c in pod.container_metrics for m in c.metrics)]
    for m in everything:
        assert m.name in descriptors, m.name
        assert len(m.label_values) == len(descriptors[m.name].label_keys), m.name
    assert len(_by_labels(everything)) == len(everything)  # no duplicate series


def test_network_metrics_are_per_pod_interface_without_lo() -> None:
    descriptors = {d.name for d in metric_descriptors()}
    pod = _pod_metrics()
    net = _by_labels(list(pod.metrics))
    assert {m.name for m in pod.metrics} == {n for n in descriptors if "network" in n}
    assert {m.label_values[-1] for m in pod.metrics} == {"eth0", "net1"}
    rx = net[("container_network_receive_bytes_total", "web", "default", "", "p1", "", "eth0")]
    assert (rx.value.value, rx.timestamp, rx.metric_type) == (9876543, TS, api_pb2.COUNTER)
    tx_drop = net[
        ("container_network_transmit_packets_dropped_total", "web", "default", "", "p1", "", "net1")
    ]
    assert tx_drop.value.value == 9


def test_container_metrics_carry_the_samples_values() -> None:
    pod = _pod_metrics()
    assert [c.container_id for c in pod.container_metrics] == ["c1", "c2", "c3"]
    c1 = _by_labels(list(pod.container_metrics[0].metrics))
    base = ("web", "default", "app", "c1", "docker.io/library/nginx:1")

    def value(name: str, *extra: str) -> int:
        return int(c1[(name, *base, *extra)].value.value)

    assert value("container_cpu_usage_seconds_total") == 5  # 5.5 s, whole seconds
    assert value("container_cpu_user_seconds_total") == 4
    assert value("container_cpu_cfs_throttled_seconds_total") == 2
    assert value("container_cpu_cfs_throttled_periods_total") == 3
    assert value("container_memory_working_set_bytes") == 4900
    assert value("container_memory_usage_bytes") == 5000
    assert value("container_memory_rss") == 4000
    assert value("container_memory_cache") == 300
    assert value("container_memory_swap") == 800
    assert value("container_memory_failcnt") == 2
    assert value("container_memory_failures_total", "pgfault", "container") == 11
    assert value("container_memory_failures_total", "pgmajfault", "hierarchy") == 5
    assert value("container_oom_events_total") == 1
    assert value("container_processes") == 7
    assert value("container_threads_max") == 1024
    assert value("container_spec_memory_limit_bytes") == GIB
    assert value("container_spec_cpu_quota") == 50_000
    assert value("container_spec_cpu_shares") == 1024
    assert value("container_start_time_seconds") == 1_600_000_000
    assert value("container_last_seen") == TS // 1_000_000_000
    assert value("container_fs_usage_bytes", "/var/lib/containerd") == 4096
    assert value("container_fs_reads_bytes_total", "/dev/sda") == 4096
    assert value("container_fs_writes_total", "/dev/sda") == 4
    assert ("container_spec_memory_reservation_limit_bytes", *base) not in c1
    assert c1[("container_memory_rss", *base)].metric_type == api_pb2.GAUGE
    assert c1[("container_cpu_usage_seconds_total", *base)].metric_type == api_pb2.COUNTER


def test_container_metrics_of_cgroup_v2_and_of_a_container_without_a_task() -> None:
    pod = _pod_metrics()
    c2 = _by_labels(list(pod.container_metrics[1].metrics))
    base = ("web", "default", "side", "c2", "busybox")
    assert c2[("container_spec_memory_limit_bytes", *base)].value.value == 0  # unlimited
    assert c2[("container_memory_failcnt", *base)].value.value == 6
    assert c2[("container_fs_writes_bytes_total", *base, "259:0")].value.value == 20
    # No task: only what the record knows.
    assert [m.name for m in pod.container_metrics[2].metrics] == ["container_last_seen"]


def test_pod_metrics_on_the_host_network_have_no_network_series() -> None:
    pod = pod_sandbox_metrics("p1", "web", "default", interfaces=None, containers=[])
    assert list(pod.metrics) == []
    assert list(pod.container_metrics) == []
