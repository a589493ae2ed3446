"""The pod cgroup reader, on cgroupfs trees laid out as v1 and v2 in a temp dir."""

from __future__ import annotations

from pathlib import Path

from criproxy.containers.podcgroup import cgroup_dir, read_pod_cgroup


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
