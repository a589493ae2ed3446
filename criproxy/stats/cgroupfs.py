"""cgroups read straight from cgroupfs, as cAdvisor does: a pod's own cgroup (its
`cgroup_parent`) for PodSandboxStats, and a container's (found from its process in
`/proc/<pid>/cgroup`) for the container stats calls, with no shim round trip. Also writes
a pod's limits for UpdatePodSandboxResources.

A sample holds what containerd's cgroups library reads from the same files for
`tasks.Metrics` (`containerd.py` decodes that), field for field: cpuacct, cpu throttling,
memory with its hierarchical `total_*` counters on v1, memsw, the OOM kill count, pids
and block IO (CFQ's recursive counters, else the throttle ones, devices named from
/proc/partitions) on v1; cpu.stat, memory.stat, memory.events, pids, io.stat and
pressure on v2. Blocking: call from a worker thread.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from criproxy.stats.sample import (
    UNLIMITED_ABOVE,
    BlkioLine,
    BlockIo,
    CgroupSample,
    Pressure,
    PressureData,
    available_bytes,
    fold_v1_block_io,
    limit_or_none,
    working_set,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from criproxy.oci.container import ContainerResources

__all__ = [
    "PROC",
    "ROOT",
    "ProcessCounts",
    "accounting_dirs",
    "apply_pod_limits",
    "cgroup_dir",
    "process_cgroup",
    "process_counts",
    "read_cgroup",
    "read_pod_cgroup",
]

ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")
UNIFIED = ""
"""The key of a v2 cgroup's one directory in a dirs mapping."""
_NS_PER_SECOND = 1_000_000_000
_NS_PER_USEC = 1_000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cgroup_dir(parent: str, systemd: bool) -> str:
    """The directory of `parent` below a hierarchy's root.

    A systemd slice `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice`.
    """
    if systemd or parent.endswith(".slice"):
        name = parent.rstrip("/").rsplit("/", 1)[-1]
        if name == "-.slice":
            return ""
        parts = name.removesuffix(".slice").split("-")
        return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    return parent.strip("/")


@dataclass(frozen=True)
class ProcessCounts:
    """What cAdvisor counts over a container's processes."""

    file_descriptors: int
    sockets: int
    open_files_soft_limit: int | None
    """RLIMIT_NOFILE's soft limit of the container's first process (None: unlimited)."""


def accounting_dirs(dirs: Mapping[str, Path]) -> list[Path]:
    """The directories whose files make a sample (CPU and memory accounting): each names
    its task when the cgroup is the task's own."""
    return [d for key, d in dirs.items() if key in (UNIFIED, "cpuacct", "memory")]


def process_counts(dirs: Mapping[str, Path], proc: Path = PROC) -> ProcessCounts | None:
    """Open files and sockets of every process in a cgroup (`process_cgroup`'s shape),
    from /proc; None when the cgroup is gone. Blocking."""
    text = None
    for key in (UNIFIED, "pids", "memory", "cpuacct"):
        if key in dirs:
            text = _read(dirs[key] / "cgroup.procs")
            break
    if text is None:
        return None
    fds = sockets = 0
    soft: int | None = None
    first = True
    for pid in text.split():
        fd_dir = proc / pid / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # exited meanwhile
        fds += len(names)
        for name in names:
            try:
                sockets += os.readlink(fd_dir / name).startswith("socket:")
            except OSError:
                continue
        if first:
            soft, first = _open_files_soft_limit(proc / pid / "limits"), False
    return ProcessCounts(fds, sockets, soft)


def _open_files_soft_limit(path: Path) -> int | None:
    for line in (_read(path) or "").splitlines():
        if line.startswith("Max open files"):
            soft = re.split(r"\s{2,}", line.strip())[1]
            return int(soft) if soft.isdigit() else None
    return None


def _read(path: Path) -> str | None:
    """A cgroup file's text; None when it cannot be read. One read: cgroupfs hands a whole
    small file to the first read, and a stats call reads some twenty per container."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(text: str | None) -> int:
    try:
        return int((text or "").strip().split()[0])
    except (ValueError, IndexError):
        return 0


def _uint_or_max(text: str | None) -> int:
    """A v2 value file as containerd's cgroups library reads it: `max` is 2**64-1, an
    unreadable file 0."""
    value = (text or "").strip()
    return (1 << 64) - 1 if value == "max" else _int(value)


def _stat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _is_v2(root: Path) -> bool:
    return (root / "cgroup.controllers").exists()


def read_pod_cgroup(parent: str, systemd: bool, root: Path = ROOT) -> CgroupSample | None:
    """The pod cgroup's sample, or None when it cannot be read (no parent, gone, ...)."""
    if not parent:
        return None
    rel = cgroup_dir(parent, systemd)
    if _is_v2(root):
        return read_cgroup({UNIFIED: root / rel})
    return read_cgroup({c: root / c / rel for c in V1_CONTROLLERS})


def process_cgroup(pid: int, root: Path = ROOT, proc: Path = PROC) -> dict[str, Path] | None:
    """The cgroup directories of process `pid` (v1: one per controller; v2: UNIFIED's),
    from /proc/<pid>/cgroup; None when the process is gone. The paths there are relative
    to criproxy's own cgroup namespace, as the cgroupfs it mounted shows them."""
    text = _read(proc / str(pid) / "cgroup")
    if text is None:
        return None
    v2 = _is_v2(root)
    dirs: dict[str, Path] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        rel = path.lstrip("/")
        if v2 and not controllers and line.startswith("0::"):
            return {UNIFIED: root / rel}
        for controller in controllers.split(","):
            if not v2 and controller in V1_CONTROLLERS:
                dirs[controller] = root / controller / rel
    return dirs or None


class DeviceNames:
    """Block device names by (major, minor), from /proc/partitions (as containerd), read
    on first use: one read serves every sample of a batch."""

    def __init__(self, proc: Path = PROC) -> None:
        self._proc = proc
        self._names: dict[tuple[int, int], str] | None = None

    def __call__(self, major: int, minor: int) -> str:
        if self._names is None:
            self._names = _partitions(self._proc)
        return self._names.get((major, minor), f"{major}:{minor}")


def read_cgroup(
    dirs: Mapping[str, Path], proc: Path = PROC, devices: DeviceNames | None = None
) -> CgroupSample | None:
    """A cgroup's sample from its directories (`process_cgroup`'s shape); None when
    neither its CPU nor its memory accounting can be read (gone, or never there)."""
    if UNIFIED in dirs:
        return _v2(dirs[UNIFIED])
    return _v1(dirs, devices or DeviceNames(proc))


def _v1(dirs: Mapping[str, Path], devices: DeviceNames) -> CgroupSample | None:
    memory, cpuacct = dirs.get("memory"), dirs.get("cpuacct")
    usage_text = _read(memory / "memory.usage_in_bytes") if memory else None
    cpu_text = _read(cpuacct / "cpuacct.usage") if cpuacct else None
    if usage_text is None and cpu_text is None:
        return None
    fields: dict[str, object] = {}
    if cpu_text is not None and cpuacct is not None:
        ticks = _stat(_read(cpuacct / "cpuacct.stat"))
        throttling = _stat(_read(dirs["cpu"] / "cpu.stat")) if "cpu" in dirs else {}
        fields.update(
            has_cpu=True,
            cpu_usage_ns=_int(cpu_text),
            cpu_user_ns=ticks.get("user", 0) * _NS_PER_SECOND // _CLOCK_TICKS,
            cpu_system_ns=ticks.get("system", 0) * _NS_PER_SECOND // _CLOCK_TICKS,
            cpu_periods=throttling.get("nr_periods", 0),
            cpu_throttled_periods=throttling.get("nr_throttled", 0),
            cpu_throttled_ns=throttling.get("throttled_time", 0),
        )
    if usage_text is not None and memory is not None:
        fields.update(_v1_memory(memory, _int(usage_text)))
    if "pids" in dirs:
        fields.update(_pids(dirs["pids"]))
    if "blkio" in dirs:
        fields["block_io"] = _v1_block_io(dirs["blkio"], devices)
    return CgroupSample(timestamp_ns=time.time_ns(), cgroup_version=1, **fields)  # type: ignore[arg-type]


def _v1_memory(memory: Path, usage: int) -> dict[str, object]:
    stat = _stat(_read(memory / "memory.stat"))
    limit = limit_or_none(_int(_read(memory / "memory.limit_in_bytes")))
    inactive = stat.get("total_inactive_file", 0)
    ws = working_set(usage, inactive)
    fields: dict[str, object] = {
        "has_memory": True,
        "memory_usage_bytes": usage,
        "memory_working_set_bytes": ws,
        "memory_limit_bytes": limit,
        "available_bytes": available_bytes(limit, ws),
        "rss_bytes": stat.get("total_rss", 0),
        "cache_bytes": stat.get("total_cache", 0),
        "mapped_file_bytes": stat.get("total_mapped_file", 0),
        "active_file_bytes": stat.get("total_active_file", 0),
        "inactive_file_bytes": inactive,
        "max_usage_bytes": _int(_read(memory / "memory.max_usage_in_bytes")),
        "kernel_usage_bytes": _int(_read(memory / "memory.kmem.usage_in_bytes")),
        "failcnt": _int(_read(memory / "memory.failcnt")),
        "page_faults": stat.get("total_pgfault", 0),
        "major_page_faults": stat.get("total_pgmajfault", 0),
        "container_page_faults": stat.get("pgfault", 0),
        "container_major_page_faults": stat.get("pgmajfault", 0),
    }
    # memsw counts memory + swap; without swap accounting its files are absent
    memsw_limit = _int(_read(memory / "memory.memsw.limit_in_bytes"))
    if memsw_limit != 0:
        memsw = limit_or_none(memsw_limit)
        memsw_usage = _int(_read(memory / "memory.memsw.usage_in_bytes"))
        fields["swap_usage_bytes"] = max(memsw_usage - usage, 0)
        fields["swap_limit_bytes"] = (
            max(memsw - limit, 0) if memsw is not None and limit is not None else None
        )
    oom = _read(memory / "memory.oom_control")
    if oom is not None:
        fields["oom_kills"] = _stat(oom).get("oom_kill", 0)
    return fields


def _pids(path: Path) -> dict[str, object]:
    """The pids controller's count and limit ("max": none, 0), the same on v1 and v2."""
    current = _read(path / "pids.current")
    if current is None:
        return {}
    maximum = (_read(path / "pids.max") or "").strip()
    return {"pids": _int(current), "pids_limit": 0 if maximum == "max" else _int(maximum)}


def _partitions(proc: Path) -> dict[tuple[int, int], str]:
    """Block device names by (major, minor), from /proc/partitions (as containerd)."""
    names: dict[tuple[int, int], str] = {}
    for line in (_read(proc / "partitions") or "").splitlines()[2:]:
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit() and fields[1].isdigit():
            names.setdefault((int(fields[0]), int(fields[1])), f"/dev/{fields[3]}")
    return names


def _blkio_lines(path: Path) -> list[BlkioLine]:
    """The (major, minor, op, value) lines of a blkio file; its `Total` line skipped."""
    lines = []
    for line in (_read(path) or "").splitlines():
        fields = line.split()
        if len(fields) != 3 or ":" not in fields[0]:
            continue
        major, _, minor = fields[0].partition(":")
        try:
            lines.append((int(major), int(minor), fields[1], int(fields[2])))
        except ValueError:
            continue
    return lines


def _v1_block_io(blkio: Path, devices: DeviceNames) -> tuple[BlockIo, ...]:
    """Reads and writes per device: CFQ's recursive counters where the kernel keeps
    them, else the throttle layer's (containerd falls back the same way)."""
    service_bytes = _blkio_lines(blkio / "blkio.io_service_bytes_recursive")
    serviced = _blkio_lines(blkio / "blkio.io_serviced_recursive")
    if not service_bytes and not serviced:
        service_bytes = _blkio_lines(blkio / "blkio.throttle.io_service_bytes")
        serviced = _blkio_lines(blkio / "blkio.throttle.io_serviced")
    if not service_bytes and not serviced:
        return ()
    return fold_v1_block_io(service_bytes, serviced, devices)


def _v2(path: Path) -> CgroupSample | None:
    cpu_text = _read(path / "cpu.stat")
    current = _read(path / "memory.current")
    if current is None and cpu_text is None:
        return None
    fields: dict[str, object] = {}
    if cpu_text is not None:
        cpu = _stat(cpu_text)
        fields.update(
            has_cpu=True,
            cpu_usage_ns=cpu.get("usage_usec", 0) * _NS_PER_USEC,
            cpu_user_ns=cpu.get("user_usec", 0) * _NS_PER_USEC,
            cpu_system_ns=cpu.get("system_usec", 0) * _NS_PER_USEC,
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_usec", 0) * _NS_PER_USEC,
            cpu_pressure=_pressure(_read(path / "cpu.pressure")),
        )
    if current is not None:
        fields.update(_v2_memory(path, _int(current)))
    events = _read(path / "memory.events")
    if events is not None:
        counts = _stat(events)
        fields.update(oom_kills=counts.get("oom_kill", 0), failcnt=counts.get("max", 0))
    fields.update(_pids(path))
    io = _read(path / "io.stat")
    if io is not None:
        fields["block_io"] = _v2_block_io(io)
        fields["io_pressure"] = _pressure(_read(path / "io.pressure"))
    return CgroupSample(timestamp_ns=time.time_ns(), cgroup_version=2, **fields)  # type: ignore[arg-type]


def _v2_memory(path: Path, usage: int) -> dict[str, object]:
    stat = _stat(_read(path / "memory.stat"))
    limit = limit_or_none(_uint_or_max(_read(path / "memory.max")))
    inactive = stat.get("inactive_file", 0)
    ws = working_set(usage, inactive)
    swap_limit = _uint_or_max(_read(path / "memory.swap.max"))
    return {
        "has_memory": True,
        "memory_usage_bytes": usage,
        "memory_working_set_bytes": ws,
        "memory_limit_bytes": limit,
        "available_bytes": available_bytes(limit, ws),
        "rss_bytes": stat.get("anon", 0),
        "cache_bytes": stat.get("file", 0),
        "mapped_file_bytes": stat.get("file_mapped", 0),
        "active_file_bytes": stat.get("active_file", 0),
        "inactive_file_bytes": inactive,
        "max_usage_bytes": _int(_read(path / "memory.peak")),
        "kernel_usage_bytes": _v2_kernel(stat),
        "page_faults": stat.get("pgfault", 0),
        "major_page_faults": stat.get("pgmajfault", 0),
        "container_page_faults": stat.get("pgfault", 0),
        "container_major_page_faults": stat.get("pgmajfault", 0),
        "swap_usage_bytes": _int(_read(path / "memory.swap.current")),
        # memory.swap.max may truly be 0 (the kubelet's NoSwap), so 0 is a limit here
        "swap_limit_bytes": swap_limit if swap_limit <= UNLIMITED_ABOVE else None,
        "memory_pressure": _pressure(_read(path / "memory.pressure")),
    }


def _v2_kernel(stat: Mapping[str, int]) -> int:
    """memory.stat's `kernel` (Linux >= 5.18), else the parts older kernels list."""
    if "kernel" in stat:
        return stat["kernel"]
    return sum(stat.get(k, 0) for k in ("kernel_stack", "pagetables", "percpu", "sock", "slab"))


def _v2_block_io(text: str) -> tuple[BlockIo, ...]:
    devices = []
    for line in text.splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        values = {k: int(v) for k, _, v in (p.partition("=") for p in pairs) if v.isdigit()}
        devices.append(
            BlockIo(
                device=device,
                major=int(major),
                minor=int(minor),
                read_bytes=values.get("rbytes", 0),
                write_bytes=values.get("wbytes", 0),
                reads=values.get("rios", 0),
                writes=values.get("wios", 0),
            )
        )
    return tuple(devices)


def _pressure(text: str | None) -> Pressure | None:
    """A PSI file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0`, then `full ...`);
    None where the kernel keeps none."""
    if text is None:
        return None
    lines: dict[str, PressureData] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values = dict(p.partition("=")[::2] for p in pairs)
        try:
            lines[kind] = PressureData(
                int(values["total"]) * _NS_PER_USEC,
                float(values["avg10"]),
                float(values["avg60"]),
                float(values["avg300"]),
            )
        except (KeyError, ValueError):
            continue
    return Pressure(some=lines.get("some"), full=lines.get("full"))


def apply_pod_limits(
    parent: str, systemd: bool, resources: ContainerResources, root: Path = ROOT
) -> list[str]:
    """Write the pod's CPU and memory limits into its cgroup; the files written. Unset
    (zero) fields are left alone."""
    rel = cgroup_dir(parent, systemd)
    period = resources.cpu_period
    quota = resources.cpu_quota
    shares = resources.cpu_shares
    memory = resources.memory_limit_in_bytes
    writes: list[tuple[Path, str]] = []
    if (root / "cgroup.controllers").exists():
        pod = root / rel
        if quota or period:
            writes.append((pod / "cpu.max", f"{quota if quota > 0 else 'max'} {period or 100000}"))
        if shares:
            # cgroup v2 weight from v1 shares, as runc converts them
            writes.append((pod / "cpu.weight", str(1 + ((shares - 2) * 9999) // 262142)))
        if memory:
            writes.append((pod / "memory.max", str(memory)))
    else:
        cpu = root / "cpu" / rel
        if period:
            writes.append((cpu / "cpu.cfs_period_us", str(period)))
        if quota:
            writes.append((cpu / "cpu.cfs_quota_us", str(quota)))
        if shares:
            writes.append((cpu / "cpu.shares", str(shares)))
        if memory:
            writes.append((root / "memory" / rel / "memory.limit_in_bytes", str(memory)))
    for path, value in writes:
        path.write_text(value)
    return [str(path) for path, _ in writes]
