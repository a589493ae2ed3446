"""A pod's own cgroup (its `cgroup_parent`) on cgroupfs: read for PodSandboxStats, written
for UpdatePodSandboxResources.

containerd's CRI reads the pod cgroup the kubelet made, so the pod's figures include
its limit (available bytes) and stay monotonic when a container goes; summing the
containers' cgroups cannot do either. The sample is the same CgroupSample containerd's
metrics decode to (`containerd.py`). Blocking: call from a worker thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from criproxy.stats.sample import (
    CgroupSample,
    available_bytes,
    limit_or_none,
    working_set,
)

if TYPE_CHECKING:
    from criproxy.oci.container import ContainerResources

__all__ = ["ROOT", "apply_pod_limits", "cgroup_dir", "read_pod_cgroup"]

ROOT = Path("/sys/fs/cgroup")


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(text: str | None) -> int:
    try:
        return int((text or "").strip().split()[0])
    except (ValueError, IndexError):
        return 0


def _stat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_pod_cgroup(parent: str, systemd: bool, root: Path = ROOT) -> CgroupSample | None:
    """The pod cgroup's sample, or None when it cannot be read (no parent, gone, ...)."""
    if not parent:
        return None
    rel = cgroup_dir(parent, systemd)
    if (root / "cgroup.controllers").exists():
        return _v2(root / rel)
    return _v1(root, rel)


def _memory(
    usage: int, limit: int | None, *, inactive: int, rss: int, faults: int, major: int
) -> dict[str, object]:
    working = working_set(usage, inactive)
    return {
        "has_memory": True,
        "memory_usage_bytes": usage,
        "memory_working_set_bytes": working,
        "memory_limit_bytes": limit,
        "available_bytes": available_bytes(limit, working),
        "rss_bytes": rss,
        "inactive_file_bytes": inactive,
        "page_faults": faults,
        "major_page_faults": major,
    }


def _v1(root: Path, rel: str) -> CgroupSample | None:
    memory_dir = root / "memory" / rel
    usage_text = _read(memory_dir / "memory.usage_in_bytes")
    cpu_text = _read(root / "cpuacct" / rel / "cpuacct.usage")
    if usage_text is None and cpu_text is None:
        return None
    fields: dict[str, object] = {}
    if usage_text is not None:
        stat = _stat(_read(memory_dir / "memory.stat"))
        fields.update(
            _memory(
                _int(usage_text),
                limit_or_none(_int(_read(memory_dir / "memory.limit_in_bytes"))),
                inactive=stat.get("total_inactive_file", 0),
                rss=stat.get("total_rss", 0),
                faults=stat.get("total_pgfault", 0),
                major=stat.get("total_pgmajfault", 0),
            )
        )
    if cpu_text is not None:
        fields.update(has_cpu=True, cpu_usage_ns=_int(cpu_text))
    pids = _read(root / "pids" / rel / "pids.current")
    if pids is not None:
        fields["pids"] = _int(pids)
    return CgroupSample(timestamp_ns=time.time_ns(), cgroup_version=1, **fields)  # type: ignore[arg-type]


def _v2(path: Path) -> CgroupSample | None:
    current = _read(path / "memory.current")
    cpu = _stat(_read(path / "cpu.stat"))
    if current is None and not cpu:
        return None
    fields: dict[str, object] = {}
    if current is not None:
        stat = _stat(_read(path / "memory.stat"))
        limit_text = (_read(path / "memory.max") or "").strip()
        fields.update(
            _memory(
                _int(current),
                limit_or_none(int(limit_text)) if limit_text.isdigit() else None,
                inactive=stat.get("inactive_file", 0),
                rss=stat.get("anon", 0),
                faults=stat.get("pgfault", 0),
                major=stat.get("pgmajfault", 0),
            )
        )
    if cpu:
        fields.update(has_cpu=True, cpu_usage_ns=cpu.get("usage_usec", 0) * 1000)
    pids = _read(path / "pids.current")
    if pids is not None:
        fields["pids"] = _int(pids)
    return CgroupSample(timestamp_ns=time.time_ns(), cgroup_version=2, **fields)  # type: ignore[arg-type]


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
