"""Facts about the node that decide behaviour: capabilities, cgroups, kernel features."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

CAP_SYS_RESOURCE = 24


def _status_field(name: str, status: str) -> str | None:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def capability_mask(kind: str = "CapEff", status_file: Path = Path("/proc/self/status")) -> int:
    """One capability set of this process (CapEff, CapBnd, ...) as a bit mask."""
    value = _status_field(kind, status_file.read_text())
    return int(value, 16) if value else 0


def has_capability(cap: int) -> bool:
    return bool(capability_mask("CapEff") & (1 << cap))


def own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text().strip())
    except (OSError, ValueError):
        return 0


def restrict_oom_score_adj(setting: bool | str) -> bool:
    """Resolve `restrict_oom_score_adj = "auto"`.

    Without CAP_SYS_RESOURCE nothing may lower an oom_score_adj, and runc fails on a
    negative score, so scores must be clamped to criproxy's own.
    """
    if isinstance(setting, bool):
        return setting
    return not has_capability(CAP_SYS_RESOURCE)


@dataclass(frozen=True)
class CgroupInfo:
    version: int
    """2 for a pure cgroup v2 host, 1 otherwise (hybrid hosts count as v1)."""
    controllers: tuple[str, ...]


@functools.cache
def cgroup_info(root: Path = Path("/sys/fs/cgroup")) -> CgroupInfo:
    """The host's cgroup version and usable controllers (read once: they do not change
    while criproxy runs)."""
    unified = root / "cgroup.controllers"
    if unified.exists():
        return CgroupInfo(2, tuple(unified.read_text().split()))
    controllers: list[str] = []
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        fields = line.split()
        # Hierarchy 0: enabled, but on no v1 mount (on a hybrid host, the unified tree's),
        # so a v1 runtime cannot use it (hugetlb here).
        if len(fields) >= 4 and fields[3] == "1" and fields[1] != "0":
            controllers.append(fields[0])
    return CgroupInfo(1, tuple(controllers))


@functools.cache
def swap_controller_available(root: Path = Path("/sys/fs/cgroup")) -> bool:
    """Whether swap limits can be set: memsw on cgroup v1, memory.swap.max on v2 (as
    containerd checks before it sets `memory.swap`). Read once."""
    if (root / "cgroup.controllers").exists():
        return any(root.glob("*/memory.swap.max"))
    return (root / "memory" / "memory.memsw.limit_in_bytes").exists()


def overlayfs_available() -> bool:
    text = Path("/proc/filesystems").read_text()
    return any(line.split()[-1] == "overlay" for line in text.splitlines() if line.strip())


def is_root() -> bool:
    return os.geteuid() == 0


def process_start_ticks(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat,
    after the parenthesised command); None when it is gone. Blocking, cheap."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[19])


def process_started_ns(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process `pid` started, in ns since the epoch, to the kernel's clock tick; None
    when it is gone. Blocking, cheap."""
    ticks = process_start_ticks(pid, proc)
    if ticks is None:
        return None
    since_boot_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return time.time_ns() - (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - since_boot_ns)
