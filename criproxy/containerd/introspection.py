"""containerd's introspection service: which plugins loaded, and which failed and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from criproxy._generated.containerd.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)

if TYPE_CHECKING:
    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class Plugin:
    type: str
    id: str
    init_error: str
    """Empty when the plugin loaded."""
    exports: dict[str, str]
    """What the plugin publishes, e.g. a snapshotter's `root` directory."""

    @property
    def ok(self) -> bool:
        return not self.init_error


@dataclass(frozen=True)
class ServerInfo:
    uuid: str
    pid: int


class IntrospectionService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = introspection_pb2_grpc.IntrospectionStub(channel.grpc)

    async def plugins(self, *filters: str) -> list[Plugin]:
        """Plugins matching any of containerd's filter expressions (`type==...,id==...`)."""
        resp = await self._channel.unary(
            self._stub.Plugins,
            introspection_pb2.PluginsRequest(filters=list(filters)),
            operation="list plugins",
        )
        return [
            Plugin(
                p.type,
                p.id,
                p.init_err.message if p.HasField("init_err") else "",
                dict(p.exports),
            )
            for p in resp.plugins
        ]

    async def server(self) -> ServerInfo:
        resp = await self._channel.unary(
            self._stub.Server, empty_pb2.Empty(), operation="server info"
        )
        return ServerInfo(resp.uuid, resp.pid)
