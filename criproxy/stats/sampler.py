"""Samples of containers' cgroups and writable layers, for the CRI stats calls.

One `tasks.Metrics` call covers every task asked for (a 100-container ListContainerStats
is one round trip, not 100). Every sample is remembered: a caller is answered within its
deadline from the last sample when the shim is slow or the task is stopping, and CPU
nano-cores come from the delta between two samples. Writable-layer usage is refreshed in
the background at most every FS_USAGE_INTERVAL, as containerd's snapshot syncer does: a
`du` of a busy layer must never hold up a stats call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.errors import CriproxyError
from criproxy.stats.containerd import decode_metrics
from criproxy.stats.sample import CgroupSample, nano_cores

if TYPE_CHECKING:
    from collections.abc import Iterable

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
    def __init__(self, containerd: Containerd, snapshotter: str) -> None:
        self._containerd = containerd
        self._snapshotter = snapshotter
        self._last: dict[str, CgroupSample] = {}
        self._previous: dict[str, CgroupSample] = {}
        self._layers: dict[str, LayerUsage] = {}
        self._refreshing = False

    async def sample(self, ids: Iterable[str]) -> dict[str, CgroupSample]:
        """The newest sample of each running task among `ids` (absent: none ever taken)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        try:
            metrics = await self._containerd.tasks.metrics(wanted, timeout=SAMPLE_TIMEOUT)
        except CriproxyError as err:
            log.debug("metrics sweep failed; answering from the last samples", error=err.message)
            metrics = []
        for m in metrics:
            try:
                sample = decode_metrics(m.type_url, m.value, timestamp_ns=m.timestamp_ns)
            except CriproxyError as err:
                log.debug("metrics not decoded", container=m.container_id, error=err.message)
                continue
            last = self._last.get(m.container_id)
            if last is not None and last.timestamp_ns < sample.timestamp_ns:
                self._previous[m.container_id] = last
            self._last[m.container_id] = sample
        return {i: self._last[i] for i in wanted if i in self._last}

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
