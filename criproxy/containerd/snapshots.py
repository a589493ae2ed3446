"""containerd's snapshots service."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy._generated.containerd.services.snapshots.v1 import (
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from criproxy.containerd.types import Mount
from criproxy.errors import NotFound

if TYPE_CHECKING:
    import builtins
    from collections.abc import Mapping

    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str
    """`view`, `active` or `committed`."""
    labels: dict[str, str]


@dataclass(frozen=True)
class Usage:
    size: int
    inodes: int


_KINDS = {
    snapshots_pb2.VIEW: "view",
    snapshots_pb2.ACTIVE: "active",
    snapshots_pb2.COMMITTED: "committed",
}


class SnapshotsService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = snapshots_pb2_grpc.SnapshotsStub(channel.grpc)

    async def list(self, snapshotter: str, *filters: str) -> builtins.list[SnapshotInfo]:
        out: builtins.list[SnapshotInfo] = []
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=filters)
        async for page in self._channel.stream(
            self._stub.List, request, operation=f"list {snapshotter} snapshots"
        ):
            out.extend(
                SnapshotInfo(i.name, i.parent, _KINDS.get(i.kind, "unknown"), dict(i.labels))
                for i in page.info
            )
        return out

    async def usage(self, snapshotter: str, key: str) -> Usage:
        resp = await self._channel.unary(
            self._stub.Usage,
            snapshots_pb2.UsageRequest(snapshotter=snapshotter, key=key),
            operation=f"usage of {snapshotter} snapshot {key}",
        )
        return Usage(resp.size, resp.inodes)

    async def stat(self, snapshotter: str, key: str) -> SnapshotInfo | None:
        try:
            resp = await self._channel.unary(
                self._stub.Stat,
                snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
                operation=f"stat {snapshotter} snapshot {key}",
            )
        except NotFound:
            return None
        i = resp.info
        return SnapshotInfo(i.name, i.parent, _KINDS.get(i.kind, "unknown"), dict(i.labels))

    async def prepare(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        resp = await self._channel.unary(
            self._stub.Prepare,
            snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
            ),
            operation=f"prepare {snapshotter} snapshot {key}",
        )
        return [Mount.from_proto(m) for m in resp.mounts]

    async def view(self, snapshotter: str, key: str, parent: str) -> builtins.list[Mount]:
        """A read-only snapshot of `parent` (a committed chain), to read an image's files."""
        resp = await self._channel.unary(
            self._stub.View,
            snapshots_pb2.ViewSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent),
            operation=f"view {snapshotter} snapshot {parent} as {key}",
        )
        return [Mount.from_proto(m) for m in resp.mounts]

    async def mounts(self, snapshotter: str, key: str) -> builtins.list[Mount]:
        """How to mount an active snapshot (a container's rootfs) again."""
        resp = await self._channel.unary(
            self._stub.Mounts,
            snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key),
            operation=f"mounts of {snapshotter} snapshot {key}",
        )
        return [Mount.from_proto(m) for m in resp.mounts]

    async def commit(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None:
        await self._channel.unary(
            self._stub.Commit,
            snapshots_pb2.CommitSnapshotRequest(
                snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})
            ),
            operation=f"commit {snapshotter} snapshot {key} as {name}",
        )

    async def remove(self, snapshotter: str, key: str) -> None:
        """Remove a snapshot; one that is gone already is fine."""
        with contextlib.suppress(NotFound):
            await self._channel.unary(
                self._stub.Remove,
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                operation=f"remove {snapshotter} snapshot {key}",
            )
