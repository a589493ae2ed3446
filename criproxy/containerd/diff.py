"""containerd's diff service: applies a layer blob from the content store onto mounts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy._generated.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from criproxy.containerd.types import Descriptor, Mount

if TYPE_CHECKING:
    from collections.abc import Sequence

    from criproxy.containerd.client import Channel


class DiffService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = diff_pb2_grpc.DiffStub(channel.grpc)

    async def apply(self, layer: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Apply a layer; returns the uncompressed descriptor (its digest is the diff id)."""
        resp = await self._channel.unary(
            self._stub.Apply,
            diff_pb2.ApplyRequest(diff=layer.to_proto(), mounts=[m.to_proto() for m in mounts]),
            operation=f"apply layer {layer.digest}",
            timeout=None,
        )
        return Descriptor.from_proto(resp.applied)
