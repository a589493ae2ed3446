"""The image filesystem the kubelet's image GC watches: the snapshotter's directory and the
bytes and inodes its snapshots use, as containerd reports them.

A committed snapshot never changes, so its usage is measured once; an active one (a
container's writable layer, a `du` inside containerd) at most every USAGE_INTERVAL, as
containerd's CRI refreshes its snapshot store in the background. The kubelet asks every
few seconds; measuring every snapshot on each call cost a round trip and a directory walk
per image layer and container."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from criproxy.containerd import Containerd
    from criproxy.containerd.snapshots import SnapshotInfo

SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"
_USAGE_CONCURRENCY = 8
USAGE_INTERVAL = 10.0
"""How old an active snapshot's measurement may be (containerd's CRI: its stats period)."""


@dataclass(frozen=True)
class _Measured:
    committed: bool
    bytes: int
    inodes: int
    timestamp_ns: int


@dataclass(frozen=True)
class FilesystemUsage:
    timestamp_ns: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


class ImageFilesystem:
    def __init__(self, containerd: Containerd, snapshotter: str) -> None:
        self._containerd = containerd
        self._snapshotter = snapshotter
        self._mountpoint: str | None = None
        self._measured: dict[str, _Measured] = {}

    async def mountpoint(self) -> str:
        """The snapshotter's root directory, as the snapshotter plugin exports it."""
        if self._mountpoint is None:
            plugins = await self._containerd.introspection.plugins(
                f"type=={SNAPSHOTTER_PLUGIN},id=={self._snapshotter}"
            )
            if not plugins:
                raise FailedPrecondition(
                    f"containerd has no snapshotter {self._snapshotter!r} "
                    "(set [containerd] snapshotter to one it has)"
                )
            plugin = plugins[0]
            if not plugin.ok:
                raise FailedPrecondition(
                    f"containerd's {self._snapshotter} snapshotter failed to load: "
                    f"{plugin.init_error}"
                )
            self._mountpoint = plugin.exports.get("root", "")
        return self._mountpoint

    async def usage(self) -> FilesystemUsage:
        """Sum the usage of every snapshot of the configured snapshotter; the timestamp is
        the oldest measurement's."""
        mountpoint = await self.mountpoint()
        snapshots = await self._containerd.snapshots.list(self._snapshotter)
        now = time.time_ns()
        names = {s.name for s in snapshots}
        for gone in self._measured.keys() - names:
            del self._measured[gone]
        stale = [s for s in snapshots if not self._fresh(s, now)]
        limiter = anyio.CapacityLimiter(_USAGE_CONCURRENCY)

        async def measure(snapshot: SnapshotInfo) -> None:
            async with limiter:
                try:
                    usage = await self._containerd.snapshots.usage(self._snapshotter, snapshot.name)
                except NotFound:
                    return  # removed since the listing
            self._measured[snapshot.name] = _Measured(
                snapshot.kind == "committed", usage.size, usage.inodes, time.time_ns()
            )

        async with anyio.create_task_group() as tg:
            for snapshot in stale:
                tg.start_soon(measure, snapshot)
        counted = [self._measured[n] for n in names if n in self._measured]
        return FilesystemUsage(
            min((m.timestamp_ns for m in counted), default=now),
            mountpoint,
            sum(m.bytes for m in counted),
            sum(m.inodes for m in counted),
        )

    def _fresh(self, snapshot: SnapshotInfo, now: int) -> bool:
        measured = self._measured.get(snapshot.name)
        if measured is None:
            return False
        if measured.committed:
            return snapshot.kind == "committed"
        return now - measured.timestamp_ns <= USAGE_INTERVAL * 1e9
