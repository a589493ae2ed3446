"""containerd's version service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from criproxy._generated.containerd.services.version.v1 import version_pb2_grpc

if TYPE_CHECKING:
    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class ContainerdVersion:
    version: str
    revision: str


class VersionService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = version_pb2_grpc.VersionStub(channel.grpc)

    async def version(self, timeout: float | None = None) -> ContainerdVersion:
        resp = await self._channel.unary(
            self._stub.Version, empty_pb2.Empty(), operation="version", timeout=timeout
        )
        return ContainerdVersion(resp.version, resp.revision)
