"""The cgroupfs readers (pods' and processes' cgroups), on cgroupfs trees laid out as v1
and v2 in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

from criproxy.oci.container import ContainerResources
from criproxy.stats.cgroupfs import (
    UNIFIED,
    apply_pod_limits,
    cgroup_dir,
    process_cgroup,
    process_counts,
    read_cgroup,
    read_pod_cgroup,
)
from criproxy.stats.sample import BlockIo, Pressure, PressureData


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


def test_a_process_cgroup_is_found_per_controller_on_v1_and_as_one_dir_on_v2(
    tmp_path: Path,
) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cg"
    _write(
        proc / "42" / "cgroup",
        "12:pids:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n"
        "3:memory:/kubepods/pod1/c1\n1:name=systemd:/kubepods/pod1/c1\n0::/\n",
    )
    assert process_cgroup(42, root, proc) == {
        "pids": root / "pids/kubepods/pod1/c1",
        "cpu": root / "cpu/kubepods/pod1/c1",
        "cpuacct": root / "cpuacct/kubepods/pod1/c1",
        "memory": root / "memory/kubepods/pod1/c1",
    }
    _write(root / "cgroup.controllers", "cpu memory pids io\n")
    _write(proc / "43" / "cgroup", "0::/kubepods.slice/cri-containerd-c2.scope\n")
    assert process_cgroup(43, root, proc) == {
        UNIFIED: root / "kubepods.slice/cri-containerd-c2.scope"
    }
    assert process_cgroup(44, root, proc) is None  # gone


def test_v1_reads_what_containerds_cgroups_library_reads(tmp_path: Path) -> None:
    rel = "kubepods/pod1/c1"
    cg, proc = tmp_path / "cg", tmp_path / "proc"
    mem = cg / "memory" / rel
    _write(cg / "cpuacct" / rel / "cpuacct.usage", "5000000000\n")
    _write(cg / "cpuacct" / rel / "cpuacct.stat", "user 300\nsystem 200\n")
    _write(cg / "cpu" / rel / "cpu.stat", "nr_periods 10\nnr_throttled 3\nthrottled_time 777\n")
    _write(mem / "memory.usage_in_bytes", "10000\n")
    _write(mem / "memory.limit_in_bytes", "65536\n")
    _write(mem / "memory.max_usage_in_bytes", "20000\n")
    _write(mem / "memory.failcnt", "2\n")
    _write(
        mem / "memory.stat",
        "cache 1\nrss 2\npgfault 5\npgmajfault 1\ntotal_cache 4000\ntotal_rss 5000\n"
        "total_mapped_file 300\ntotal_active_file 1000\ntotal_inactive_file 3000\n"
        "total_pgfault 70\ntotal_pgmajfault 6\n",
    )
    _write(mem / "memory.memsw.usage_in_bytes", "12000\n")
    _write(mem / "memory.memsw.limit_in_bytes", "131072\n")
    _write(mem / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    _write(mem / "memory.kmem.usage_in_bytes", "640\n")
    _write(cg / "pids" / rel / "pids.current", "3\n")
    _write(cg / "pids" / rel / "pids.max", "max\n")
    _write(
        proc / "partitions",
        "major minor  #blocks  name\n\n 254  0  41943040 vda\n 254  1  41942016 vda1\n",
    )
    blkio = cg / "blkio" / rel
    _write(blkio / "blkio.io_service_bytes_recursive", "Total 0\n")  # CFQ present, unused
    _write(blkio / "blkio.io_serviced_recursive", "Total 0\n")
    _write(
        blkio / "blkio.throttle.io_service_bytes",
        "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Total 12288\n"
        "7:0 Read 512\nTotal 12800\n",
    )
    _write(blkio / "blkio.throttle.io_serviced", "254:0 Read 1\n254:0 Write 2\n7:0 Read 1\n")
    dirs = {c: cg / c / rel for c in ("cpu", "cpuacct", "memory", "pids", "blkio")}
    sample = read_cgroup(dirs, proc)
    assert sample is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert (sample.cpu_usage_ns, sample.cpu_user_ns, sample.cpu_system_ns) == (
        5_000_000_000,
        300 * 1_000_000_000 // ticks,
        200 * 1_000_000_000 // ticks,
    )
    assert (sample.cpu_periods, sample.cpu_throttled_periods, sample.cpu_throttled_ns) == (
        10,
        3,
        777,
    )
    assert (sample.memory_usage_bytes, sample.memory_working_set_bytes) == (10000, 7000)
    assert (sample.memory_limit_bytes, sample.available_bytes) == (65536, 58536)
    assert (sample.rss_bytes, sample.cache_bytes, sample.mapped_file_bytes) == (5000, 4000, 300)
    assert (sample.max_usage_bytes, sample.failcnt, sample.oom_kills) == (20000, 2, 1)
    assert sample.kernel_usage_bytes == 640
    assert (sample.page_faults, sample.major_page_faults) == (70, 6)
    assert (sample.container_page_faults, sample.container_major_page_faults) == (5, 1)
    assert (sample.swap_usage_bytes, sample.swap_limit_bytes) == (2000, 65536)
    assert (sample.pids, sample.pids_limit) == (3, 0)
    assert sample.block_io == (
        BlockIo("7:0", 7, 0, read_bytes=512, reads=1),  # not in /proc/partitions
        BlockIo("/dev/vda", 254, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),
    )


def test_v1_without_swap_accounting_has_no_swap_figures(tmp_path: Path) -> None:
    mem = tmp_path / "memory" / "c"
    _write(mem / "memory.usage_in_bytes", "10\n")
    sample = read_cgroup({"memory": mem})
    assert sample is not None and sample.has_memory and not sample.has_cpu
    assert (sample.swap_usage_bytes, sample.swap_limit_bytes) == (None, None)


def test_v2_reads_what_containerds_cgroups_library_reads(tmp_path: Path) -> None:
    path = tmp_path / "kubepods.slice" / "cri-containerd-c2.scope"
    _write(
        path / "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\n"
        "nr_throttled 1\nthrottled_usec 20\n",
    )
    _write(path / "memory.current", "8192\n")
    _write(path / "memory.max", "16384\n")
    _write(path / "memory.peak", "9000\n")
    _write(
        path / "memory.stat",
        "anon 4096\nfile 2048\nfile_mapped 100\nactive_file 1024\ninactive_file 1024\n"
        "pgfault 9\npgmajfault 2\nkernel_stack 64\nslab 256\nsock 8\npercpu 16\npagetables 32\n",
    )
    _write(path / "memory.swap.current", "0\n")
    _write(path / "memory.swap.max", "max\n")
    _write(path / "memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    _write(path / "pids.current", "2\n")
    _write(path / "pids.max", "100\n")
    _write(path / "io.stat", "254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    _write(
        path / "memory.pressure",
        "some avg10=1.50 avg60=0.00 avg300=0.00 total=12\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
    )
    sample = read_cgroup({UNIFIED: path})
    assert sample is not None and sample.cgroup_version == 2
    assert (sample.cpu_usage_ns, sample.cpu_user_ns, sample.cpu_system_ns) == (
        1_500_000,
        1_000_000,
        500_000,
    )
    assert (sample.cpu_periods, sample.cpu_throttled_periods, sample.cpu_throttled_ns) == (
        4,
        1,
        20_000,
    )
    assert (sample.memory_limit_bytes, sample.memory_working_set_bytes) == (16384, 7168)
    assert (sample.rss_bytes, sample.cache_bytes, sample.max_usage_bytes) == (4096, 2048, 9000)
    assert sample.kernel_usage_bytes == 64 + 256 + 8 + 16 + 32  # no `kernel` line (< 5.18)
    assert (sample.swap_usage_bytes, sample.swap_limit_bytes) == (0, None)
    assert (sample.oom_kills, sample.failcnt, sample.pids, sample.pids_limit) == (1, 5, 2, 100)
    assert sample.block_io == (BlockIo("254:0", 254, 0, read_bytes=4096, reads=1),)
    assert sample.memory_pressure == Pressure(
        some=PressureData(12_000, 1.5, 0.0, 0.0), full=PressureData(3_000, 0.0, 0.0, 0.0)
    )
    assert sample.cpu_pressure is None  # no cpu.pressure file: a kernel without PSI


def test_open_files_and_sockets_are_counted_over_the_cgroups_processes(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cg" / "pids" / "c1", tmp_path / "proc"
    _write(cg / "cgroup.procs", "10\n11\n12\n")  # 12 exited since
    for pid, targets in (("10", ["/dev/null", "socket:[77]", "pipe:[5]"]), ("11", ["socket:[78]"])):
        fd_dir = proc / pid / "fd"
        fd_dir.mkdir(parents=True)
        for i, target in enumerate(targets):
            (fd_dir / str(i)).symlink_to(target)
    _write(
        proc / "10" / "limits",
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1024                 524288               files\n",
    )
    counts = process_counts({"pids": cg}, proc)
    assert counts is not None
    assert (counts.file_descriptors, counts.sockets, counts.open_files_soft_limit) == (4, 2, 1024)
    assert process_counts({"pids": tmp_path / "gone"}, proc) is None
