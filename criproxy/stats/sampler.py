"""Samples of containers' cgroups and writable layers, for the CRI stats calls.

A container's cgroup is read straight from cgroupfs (`cgroupfs.py`), found through its
process's /proc/<pid>/cgroup: one worker-thread hop for every container a call asks
about, no shim round trip (containerd's CRI asks each shim in turn). Where that cannot be
done (no process known, a cgroup that does not name the container, cgroupfs not mounted
as expected) one `tasks.Metrics` call covers the rest. Every sample is remembered: a
caller is answered from the last sample when the task is stopping or the shim is slow,
and CPU nano-cores come from the delta between two samples. Writable-layer usage is
refreshed in the background at most every FS_USAGE_INTERVAL, as containerd's snapshot
syncer does: a `du` of a busy layer must never hold up a stats call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.errors import CriproxyError
from criproxy.stats.cgroupfs import (
    PROC,
    ROOT,
    DeviceNames,
    accounting_dirs,
    process_cgroup,
    read_cgroup,
)
from criproxy.stats.containerd import decode_metrics
from criproxy.stats.sample import CgroupSample, nano_cores

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from criproxy.containerd import Containerd

log = structlog.get_logger("criproxy.stats.sampler")

SAMPLE_TIMEOUT = 2.0
"""How long one metrics sweep may take before the last samples are used."""
FS_USAGE_INTERVAL = 10.0
_FS_CONCURRENCY = 8


@dataclass(frozen=True)
class LayerUsage:
    bytes: int
    inodes: int
    timestamp_ns: int


class Sampler:
    def __init__(
        self,
        containerd: Containerd,
        snapshotter: str,
        *,
        cgroup_root: Path = ROOT,
        proc: Path = PROC,
    ) -> None:
        self._containerd = containerd
        self._snapshotter = snapshotter
        self._cgroup_root = cgroup_root
        self._proc = proc
        self._last: dict[str, CgroupSample] = {}
        self._previous: dict[str, CgroupSample] = {}
        self._layers: dict[str, LayerUsage] = {}
        self._dirs: dict[tuple[str, int], Mapping[str, Path]] = {}
        self._refreshing = False

    async def sample(self, tasks: Mapping[str, int]) -> dict[str, CgroupSample]:
        """The newest sample of each running task among `tasks` (container or sandbox id:
        the pid of its process, 0 when unknown); absent: none ever taken."""
        if not tasks:
            return {}
        known = {
            (i, pid): self._dirs[(i, pid)] for i, pid in tasks.items() if (i, pid) in self._dirs
        }
        read, dirs = await anyio.to_thread.run_sync(self._read_cgroups, dict(tasks), known)
        for key in known.keys() - dirs.keys():
            self._dirs.pop(key, None)
        self._dirs.update(dirs)
        for task_id, sample in read.items():
            self._remember(task_id, sample)
        rest = [i for i in tasks if i not in read]
        if rest:
            await self._sample_through_containerd(rest)
        return {i: self._last[i] for i in tasks if i in self._last}

    def _read_cgroups(
        self, tasks: dict[str, int], known: dict[tuple[str, int], Mapping[str, Path]]
    ) -> tuple[dict[str, CgroupSample], dict[tuple[str, int], Mapping[str, Path]]]:
        """Blocking: cgroupfs reads, one worker-thread hop for all of `tasks`. Works on
        its own copy of the known cgroup directories and returns the ones still good
        (the event loop keeps the shared map)."""
        out = {}
        good: dict[tuple[str, int], Mapping[str, Path]] = {}
        devices = DeviceNames(self._proc)
        for task_id, pid in tasks.items():
            if pid <= 0:
                continue
            dirs = known.get((task_id, pid))
            if dirs is None:
                found = process_cgroup(pid, self._cgroup_root, self._proc)
                # The cgroup must be the task's own (its path names it): a pid read after
                # the task exited may be another process's by now.
                if not found or not all(task_id in str(d) for d in accounting_dirs(found)):
                    continue
                dirs = found
            sample = read_cgroup(dirs, devices=devices)
            if sample is None:  # gone: the task is ending
                continue
            good[(task_id, pid)] = dirs
            out[task_id] = sample
        return out, good

    async def _sample_through_containerd(self, ids: list[str]) -> None:
        try:
            metrics = await self._containerd.tasks.metrics(ids, timeout=SAMPLE_TIMEOUT)
        except CriproxyError as err:
            log.debug("metrics sweep failed; answering from the last samples", error=err.message)
            return
        for m in metrics:
            try:
                sample = decode_metrics(m.type_url, m.value, timestamp_ns=m.timestamp_ns)
            except CriproxyError as err:
                log.debug("metrics not decoded", container=m.container_id, error=err.message)
                continue
            self._remember(m.container_id, sample)

    def _remember(self, task_id: str, sample: CgroupSample) -> None:
        last = self._last.get(task_id)
        if last is not None and last.timestamp_ns < sample.timestamp_ns:
            self._previous[task_id] = last
        self._last[task_id] = sample

    def nano_cores(self, container_id: str) -> int:
        last = self._last.get(container_id)
        if last is None:
            return 0
        return nano_cores(self._previous.get(container_id), last)

    def layer(self, container_id: str) -> LayerUsage | None:
        return self._layers.get(container_id)

    async def refresh_layers(self, ids: Iterable[str]) -> None:
        """Measure the writable layers not measured for FS_USAGE_INTERVAL; one sweep at a
        time (a caller that finds one running gets the previous figures)."""
        if self._refreshing:
            return
        now = time.time_ns()
        stale = [
            i
            for i in ids
            if i not in self._layers or now - self._layers[i].timestamp_ns > FS_USAGE_INTERVAL * 1e9
        ]
        if not stale:
            return
        self._refreshing = True
        limiter = anyio.CapacityLimiter(_FS_CONCURRENCY)

        async def measure(container_id: str) -> None:
            async with limiter:
                try:
                    usage = await self._containerd.snapshots.usage(self._snapshotter, container_id)
                except CriproxyError:
                    return
            self._layers[container_id] = LayerUsage(usage.size, usage.inodes, time.time_ns())

        try:
            async with anyio.create_task_group() as tg:
                for container_id in stale:
                    tg.start_soon(measure, container_id)
        finally:
            self._refreshing = False

    def retain(self, ids: Iterable[str]) -> None:
        """Forget every container but these (the removed ones)."""
        keep = set(ids)
        for store in (self._last, self._previous, self._layers):
            for gone in [i for i in store if i not in keep]:
                del store[gone]
        for key in [k for k in self._dirs if k[0] not in keep]:
            del self._dirs[key]
