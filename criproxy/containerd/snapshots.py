"""containerd's snapshots service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy._generated.containerd.services.snapshots.v1 import (
    snapshots_pb2,
    snapshots_pb2_grpc,
)

if TYPE_CHECKING:
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

    async def list(self, snapshotter: str, *filters: str) -> list[SnapshotInfo]:
        out: list[SnapshotInfo] = []
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
