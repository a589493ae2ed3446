"""The image filesystem the kubelet's image GC watches: the snapshotter's directory and the
bytes and inodes its snapshots use, as containerd reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from criproxy.containerd import Containerd

SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"
_USAGE_CONCURRENCY = 8


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
        """Sum the usage of every snapshot of the configured snapshotter."""
        timestamp = time.time_ns()
        mountpoint = await self.mountpoint()
        snapshots = await self._containerd.snapshots.list(self._snapshotter)
        totals = [0, 0]
        limiter = anyio.CapacityLimiter(_USAGE_CONCURRENCY)

        async def add(key: str) -> None:
            async with limiter:
                try:
                    usage = await self._containerd.snapshots.usage(self._snapshotter, key)
                except NotFound:
                    return  # removed since the listing
            totals[0] += usage.size
            totals[1] += usage.inodes

        async with anyio.create_task_group() as tg:
            for snapshot in snapshots:
                tg.start_soon(add, snapshot.name)
        return FilesystemUsage(timestamp, mountpoint, totals[0], totals[1])
