"""The one cgroup sample type, read from either source, and the arithmetic on it.

`containerd.py` fills a CgroupSample from containerd's task metrics, `cgroupfs.py` from a
pod cgroup's files; everything after works on the version-neutral sample. The arithmetic
is containerd's CRI plugin's (`internal/cri/server/container_stats_list.go`,
`sandbox_stats_linux.go`), so the kubelet's summary API and evictions see the numbers
they would on containerd; where containerd's uint64 arithmetic would wrap, the result
is floored at 0 instead (said where it happens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from criproxy.errors import Internal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "UNLIMITED_ABOVE",
    "BlockIo",
    "CgroupSample",
    "InterfaceStats",
    "Pressure",
    "PressureData",
    "available_bytes",
    "fold_v1_block_io",
    "limit_or_none",
    "nano_cores",
    "read_net_dev",
    "working_set",
]

UNLIMITED_ABOVE = 1 << 62
"""Limits above this are "no limit" (the kernel rounds its max, so not exactly 2**63-1)."""
_NS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True)
class PressureData:
    """One PSI line (`some` or `full`); `total_ns` already in nanoseconds, as CRI wants."""

    total_ns: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """Pressure stall information of one resource (cgroup v2 only)."""

    some: PressureData | None = None
    full: PressureData | None = None


@dataclass(frozen=True)
class BlockIo:
    """Per-device block IO counters, cumulative."""

    device: str
    """The device node (`/dev/sda`) when cgroup v1 named it, else `major:minor`."""
    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass(frozen=True)
class CgroupSample:
    """One cgroup's metrics at one instant, the same for cgroup v1 and v2.

    Memory figures follow cAdvisor and containerd: on v1 the hierarchical `total_*`
    counters, on v2 the cgroup's own (which are hierarchical already). A group whose
    controller was absent has its `has_*` flag false and zeros.
    """

    timestamp_ns: int
    cgroup_version: Literal[1, 2]
    has_cpu: bool = False
    cpu_usage_ns: int = 0
    """Cumulative CPU time, all cores."""
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_ns: int = 0
    has_memory: bool = False
    memory_usage_bytes: int = 0
    memory_working_set_bytes: int = 0
    """usage - inactive file, floored at 0: what the kubelet evicts on."""
    memory_limit_bytes: int | None = None
    """None when there is no limit."""
    available_bytes: int = 0
    """limit - working set when there is a limit (floored at 0), else 0 as containerd sends."""
    rss_bytes: int = 0
    """v1 total_rss; v2 anon (as cAdvisor counts RSS on v2)."""
    cache_bytes: int = 0
    mapped_file_bytes: int = 0
    active_file_bytes: int = 0
    inactive_file_bytes: int = 0
    max_usage_bytes: int = 0
    kernel_usage_bytes: int = 0
    """Kernel memory charged to the cgroup (v1: kmem usage; v2: memory.stat's kernel)."""
    """The high-water mark (v1 max_usage_in_bytes, v2 memory.peak; 0 on kernels without it)."""
    failcnt: int = 0
    """Times usage hit the limit (v1 failcnt, v2 memory.events `max`)."""
    page_faults: int = 0
    major_page_faults: int = 0
    container_page_faults: int = 0
    """Faults of this cgroup alone (v1 `pgfault`, not `total_pgfault`); on v2 = page_faults."""
    container_major_page_faults: int = 0
    swap_usage_bytes: int | None = None
    """Swap alone (v1: memsw - usage). None when swap is not accounted (v1 without memsw)."""
    swap_limit_bytes: int | None = None
    """Swap alone that may be used; None when unlimited or not accounted."""
    oom_kills: int = 0
    pids: int = 0
    """pids.current: the tasks in the cgroup (the kernel counts threads)."""
    pids_limit: int = 0
    """pids.max, 0 when unlimited."""
    block_io: tuple[BlockIo, ...] = ()
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None


@dataclass(frozen=True)
class InterfaceStats:
    """One line of /proc/<pid>/net/dev: cumulative counters of one interface."""

    name: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


BlkioLine = tuple[int, int, str, int]
"""One line of a cgroup v1 blkio counter: (major, minor, op, value)."""


def fold_v1_block_io(
    service_bytes: Iterable[BlkioLine],
    serviced: Iterable[BlkioLine],
    device: Callable[[int, int], str],
) -> tuple[BlockIo, ...]:
    """cgroup v1 blkio's per-op lines (Read, Write, Sync, Async, ...) folded into one record
    per device, named by `device(major, minor)`."""
    counters: dict[tuple[int, int], dict[str, int]] = {}
    for lines, suffix in ((service_bytes, "_bytes"), (serviced, "s")):
        for major, minor, op, value in lines:
            name = op.lower()
            if name in ("read", "write"):
                c = counters.setdefault((major, minor), {})
                c[name + suffix] = c.get(name + suffix, 0) + value
    return tuple(
        BlockIo(
            device=device(*key),
            major=key[0],
            minor=key[1],
            read_bytes=c.get("read_bytes", 0),
            write_bytes=c.get("write_bytes", 0),
            reads=c.get("reads", 0),
            writes=c.get("writes", 0),
        )
        for key, c in sorted(counters.items())
    )


def limit_or_none(value: int) -> int | None:
    """A cgroup limit, or None for "no limit" (the kernel's near-2**63 or v2's `max`).

    0 also reads as no limit: it is what containerd's cgroups library reports for a
    limit file that is absent, and a real limit of 0 bytes would not leave a task alive.
    """
    return value if 0 < value <= UNLIMITED_ABOVE else None


def working_set(usage: int, inactive_file: int) -> int:
    """containerd's getWorkingSet: usage - inactive file, 0 when inactive file exceeds usage."""
    return usage - inactive_file if inactive_file < usage else 0


def available_bytes(limit: int | None, working_set: int) -> int:
    """containerd's getAvailableBytes, floored at 0 where Go's uint64 would wrap around."""
    return max(limit - working_set, 0) if limit is not None else 0


def nano_cores(previous: CgroupSample | None, current: CgroupSample) -> int:
    """CRI's usage_nano_cores: CPU-ns used per second of wall time since `previous`.

    0 without a previous sample, over a non-positive interval, or when the cumulative
    counter went backwards (a container just replaced), as containerd answers then.
    """
    if previous is None:
        return 0
    interval = current.timestamp_ns - previous.timestamp_ns
    used = current.cpu_usage_ns - previous.cpu_usage_ns
    if interval <= 0 or used < 0:
        return 0
    return used * _NS_PER_SECOND // interval


def read_net_dev(text: str) -> list[InterfaceStats]:
    """Parse /proc/<pid>/net/dev: every interface of the process's network namespace.

    The first two lines are headers; each other line is `name: ` followed by 8 receive
    and 8 transmit counters. Interface names cannot contain `:`, and a counter may run
    into the colon on old kernels (`eth0:12345`), so the line is split at the colon.
    """
    interfaces = []
    for line in text.splitlines()[2:]:
        if not line.strip():
            continue
        name, sep, counters = line.partition(":")
        fields = counters.split()
        if not sep or len(fields) < 16:
            raise Internal(f"unexpected line in net/dev: {line!r}")
        try:
            n = [int(f) for f in fields[:16]]
        except ValueError:
            raise Internal(f"unexpected line in net/dev: {line!r}") from None
        interfaces.append(
            InterfaceStats(
                name=name.strip(),
                rx_bytes=n[0],
                rx_packets=n[1],
                rx_errors=n[2],
                rx_dropped=n[3],
                tx_bytes=n[8],
                tx_packets=n[9],
                tx_errors=n[10],
                tx_dropped=n[11],
            )
        )
    return interfaces
