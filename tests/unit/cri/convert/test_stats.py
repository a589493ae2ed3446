"""CRI ContainerStats and PodSandboxStats from the stats domain's figures, field by field."""

from __future__ import annotations

from criproxy._generated.containerd.cgroups.v1 import metrics_pb2 as cg1
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.stats import container_stats, network_usage, pod_sandbox_stats
from criproxy.stats import (
    ContainerAttributes,
    ContainerUsage,
    InterfaceStats,
    PodAttributes,
    PodUsage,
    decode_metrics,
    read_net_dev,
)
from tests.support.stats import GIB, NET_DEV, TS, V1, v1_metrics, v1_sample, v2_sample


def test_cgroup_v1_without_swap_accounting_has_no_swap() -> None:
    m = v1_metrics()
    m.memory.ClearField("swap")
    sample = decode_metrics(V1, m.SerializeToString(), timestamp_ns=TS)
    assert (sample.swap_usage_bytes, sample.swap_limit_bytes) == (None, None)
    stats = container_stats(
        ContainerUsage(
            ContainerAttributes("c1", "app"),
            sample,
            nano_cores=None,
            writable_layer_bytes=0,
            writable_layer_inodes=0,
            fs_mountpoint="/",
        )
    )
    assert not stats.HasField("swap")


def test_absent_controllers_leave_their_groups_unset() -> None:
    sample = decode_metrics(V1, cg1.Metrics(pids=cg1.PidsStat(current=2)).SerializeToString())
    assert (sample.has_cpu, sample.has_memory, sample.pids) == (False, False, 2)
    stats = container_stats(
        ContainerUsage(
            ContainerAttributes("c1", "app"),
            sample,
            nano_cores=5,
            writable_layer_bytes=0,
            writable_layer_inodes=0,
            fs_mountpoint="/",
        )
    )
    for group in ("cpu", "memory", "swap", "io"):
        assert not stats.HasField(group)


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


def test_container_stats_fill_cris_fields() -> None:
    attrs = ContainerAttributes("c1", "app", 3, {"l": "1"}, {"a": "2"})
    stats = container_stats(
        ContainerUsage(
            attrs,
            v1_sample(),
            nano_cores=123,
            writable_layer_bytes=4096,
            writable_layer_inodes=12,
            fs_mountpoint="/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
        )
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
        ContainerUsage(
            ContainerAttributes("c2", "app"),
            v2_sample(),
            nano_cores=None,
            writable_layer_bytes=0,
            writable_layer_inodes=0,
            fs_mountpoint="/",
        )
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
        ContainerUsage(
            ContainerAttributes("c3", "app"),
            None,
            nano_cores=None,
            writable_layer_bytes=10,
            writable_layer_inodes=1,
            fs_mountpoint="/",
            fs_timestamp_ns=TS,
        )
    )
    assert stats.attributes.id == "c3"
    assert stats.writable_layer.timestamp == TS
    assert stats.writable_layer.used_bytes.value == 10
    for group in ("cpu", "memory", "swap", "io"):
        assert not stats.HasField(group)


def test_pod_sandbox_stats_fill_cris_fields() -> None:
    container = ContainerUsage(
        ContainerAttributes("c1", "app"),
        v1_sample(),
        nano_cores=1,
        writable_layer_bytes=0,
        writable_layer_inodes=0,
        fs_mountpoint="/",
    )
    pod = PodAttributes("p1", "web", "uid-1", "default", 1, {"app": "web"}, {"k": "v"})
    stats = pod_sandbox_stats(
        PodUsage(
            pod,
            v2_sample(),
            nano_cores=77,
            containers=(container,),
            process_count=7,
            interfaces=tuple(read_net_dev(NET_DEV)),
            timestamp_ns=TS + 5,
        )
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
    assert list(linux.containers) == [container_stats(container)]
    assert not stats.HasField("windows")


def test_pod_on_the_host_network_has_no_network_stats() -> None:
    stats = pod_sandbox_stats(
        PodUsage(
            PodAttributes("p1", "web", "uid", "default"),
            None,
            nano_cores=None,
            containers=(),
            process_count=0,
            interfaces=None,
            timestamp_ns=TS,
        )
    )
    assert not stats.linux.HasField("network")
    assert not stats.linux.HasField("cpu")
    assert stats.linux.process.process_count.value == 0
