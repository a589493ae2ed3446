"""CRI metric descriptors and pod metrics from the stats domain's figures: cAdvisor's names,
containerd's labels."""

from __future__ import annotations

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.metrics import BASE_LABEL_KEYS, metric_descriptors, pod_sandbox_metrics
from criproxy.stats import ContainerMetricsInput, PodMetricsInput, read_net_dev
from criproxy.stats.cgroupfs import ProcessCounts
from criproxy.stats.usage import FsCapacity
from tests.support.stats import GIB, NET_DEV, TS, v1_sample, v2_sample


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
    containers = (
        ContainerMetricsInput(
            id="c1",
            name="app",
            image="docker.io/library/nginx:1",
            sample=v1_sample(),
            started_at_ns=1_600_000_000_900_000_000,
            writable_layer_bytes=4096,
            fs_device="/var/lib/containerd",
            cpu_shares=1024,
            cpu_period=100_000,
            cpu_quota=50_000,
            memory_reservation_bytes=None,
            memory_swap_limit_bytes=2 * GIB,
            processes=ProcessCounts(file_descriptors=12, sockets=3, open_files_soft_limit=1024),
            fs=FsCapacity("/var/lib/containerd", 100 * GIB, 1000, 400),
        ),
        ContainerMetricsInput(id="c2", name="side", image="busybox", sample=v2_sample()),
        ContainerMetricsInput(id="c3", name="gone", image="busybox", sample=None),
    )
    return pod_sandbox_metrics(
        PodMetricsInput(
            "p1",
            "web",
            "default",
            interfaces=tuple(read_net_dev(NET_DEV)),
            containers=containers,
            timestamp_ns=TS,
        )
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
    assert value("container_memory_kernel_usage") == 640
    assert value("container_spec_memory_swap_limit_bytes") == 2 * GIB
    assert value("container_file_descriptors") == 12
    assert value("container_sockets") == 3
    assert value("container_ulimits_soft", "max_open_files") == 1024
    assert value("container_fs_limit_bytes", "/var/lib/containerd") == 100 * GIB
    assert value("container_fs_inodes_total", "/var/lib/containerd") == 1000
    assert value("container_fs_inodes_free", "/var/lib/containerd") == 400
    assert value("container_blkio_device_usage_total", "/dev/sda", "8", "0", "Read") == 4096
    assert value("container_blkio_device_usage_total", "/dev/sda", "8", "0", "Write") == 8192
    assert ("container_spec_memory_reservation_limit_bytes", *base) not in c1
    assert not any(name.startswith("container_pressure_") for name, *_ in c1)  # v1: no PSI
    assert c1[("container_memory_rss", *base)].metric_type == api_pb2.GAUGE
    assert c1[("container_cpu_usage_seconds_total", *base)].metric_type == api_pb2.COUNTER


def test_container_metrics_of_cgroup_v2_and_of_a_container_without_a_task() -> None:
    pod = _pod_metrics()
    c2 = _by_labels(list(pod.container_metrics[1].metrics))
    base = ("web", "default", "side", "c2", "busybox")
    assert c2[("container_spec_memory_limit_bytes", *base)].value.value == 0  # unlimited
    assert c2[("container_memory_failcnt", *base)].value.value == 6
    assert c2[("container_fs_writes_bytes_total", *base, "259:0")].value.value == 20
    assert c2[("container_memory_kernel_usage", *base)].value.value == 32 + 64 + 16
    for resource in ("cpu", "memory", "io"):  # PSI totals are microseconds: 1000 and 400
        assert c2[(f"container_pressure_{resource}_waiting_seconds_total", *base)].value.value == 0
        assert (f"container_pressure_{resource}_stalled_seconds_total", *base) in c2
    # No task: only what the record knows.
    assert [m.name for m in pod.container_metrics[2].metrics] == ["container_last_seen"]


def test_pod_metrics_on_the_host_network_have_no_network_series() -> None:
    pod = pod_sandbox_metrics(
        PodMetricsInput("p1", "web", "default", interfaces=None, containers=())
    )
    assert list(pod.metrics) == []
    assert list(pod.container_metrics) == []


# The names critest (master) expects from a runtime, less the two hugetlb ones: this host
# has no hugetlb hierarchy to read them from.
CRITEST_NAMES = [
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
]


def test_every_name_critest_expects_is_described() -> None:
    described = {d.name for d in metric_descriptors()}
    assert sorted(set(CRITEST_NAMES) - described) == []
