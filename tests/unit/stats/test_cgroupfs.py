"""The pod cgroup reader, on cgroupfs trees laid out as v1 and v2 in a temp dir."""

from __future__ import annotations

from pathlib import Path

from criproxy.oci.container import ContainerResources
from criproxy.stats.cgroupfs import apply_pod_limits, cgroup_dir, read_pod_cgroup


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_systemd_slices_nest_by_their_dashes() -> None:
    assert cgroup_dir("kubepods-besteffort-pod12.slice", True) == (
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
    )
    assert cgroup_dir("/kubepods/burstable/pod12", False) == "kubepods/burstable/pod12"


def test_v1_pod_cgroup(tmp_path: Path) -> None:
    mem = tmp_path / "memory" / "kubepods" / "pod1"
    _write(mem / "memory.usage_in_bytes", "10000\n")
    _write(mem / "memory.limit_in_bytes", "100000\n")
    _write(mem / "memory.stat", "total_inactive_file 3000\ntotal_rss 5000\ntotal_pgfault 7\n")
    _write(tmp_path / "cpuacct" / "kubepods" / "pod1" / "cpuacct.usage", "123456\n")
    _write(tmp_path / "pids" / "kubepods" / "pod1" / "pids.current", "4\n")
    sample = read_pod_cgroup("/kubepods/pod1", False, root=tmp_path)
    assert sample is not None
    assert (sample.memory_usage_bytes, sample.memory_working_set_bytes) == (10000, 7000)
    assert (sample.memory_limit_bytes, sample.available_bytes) == (100000, 93000)
    assert (sample.rss_bytes, sample.page_faults) == (5000, 7)
    assert (sample.cpu_usage_ns, sample.pids) == (123456, 4)


def test_v2_pod_cgroup_without_a_limit(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu memory pids\n")
    pod = tmp_path / "kubepods.slice" / "kubepods-pod2.slice"
    _write(pod / "memory.current", "8192\n")
    _write(pod / "memory.max", "max\n")
    _write(pod / "memory.stat", "anon 4096\ninactive_file 1024\n")
    _write(pod / "cpu.stat", "usage_usec 15\nuser_usec 10\n")
    sample = read_pod_cgroup("kubepods-pod2.slice", True, root=tmp_path)
    assert sample is not None
    assert sample.memory_limit_bytes is None and sample.available_bytes == 0
    assert sample.memory_working_set_bytes == 7168
    assert sample.cpu_usage_ns == 15000


def test_a_missing_cgroup_reads_as_none(tmp_path: Path) -> None:
    assert read_pod_cgroup("/nowhere", False, root=tmp_path) is None
    assert read_pod_cgroup("", False, root=tmp_path) is None


def test_pod_limits_are_written_for_v1_and_v2(tmp_path: Path) -> None:
    resources = ContainerResources(
        cpu_shares=1024, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=268435456
    )
    v1 = tmp_path / "v1"
    for controller in ("cpu", "memory"):
        (v1 / controller / "pods" / "p").mkdir(parents=True)
    written = apply_pod_limits("/pods/p", False, resources, root=v1)
    assert len(written) == 4
    assert (v1 / "memory/pods/p/memory.limit_in_bytes").read_text() == "268435456"
    assert (v1 / "cpu/pods/p/cpu.cfs_quota_us").read_text() == "50000"

    v2 = tmp_path / "v2"
    _write(v2 / "cgroup.controllers", "cpu memory\n")
    (v2 / "pods.slice" / "pods-p.slice").mkdir(parents=True)
    apply_pod_limits("pods-p.slice", True, resources, root=v2)
    pod = v2 / "pods.slice" / "pods-p.slice"
    assert (pod / "cpu.max").read_text() == "50000 100000"
    assert (pod / "memory.max").read_text() == "268435456"
    assert (pod / "cpu.weight").read_text() == "39"  # runc's shares-to-weight conversion

    assert apply_pod_limits("/pods/p", False, ContainerResources(), root=v1) == []
