"""A typed async client for containerd's gRPC API; knows nothing of Kubernetes.

Callers get the project's dataclasses and error types, never containerd's protobuf messages.
"""

from __future__ import annotations

from criproxy.containerd.client import Channel
from criproxy.containerd.introspection import IntrospectionService, Plugin, ServerInfo
from criproxy.containerd.snapshots import SnapshotInfo, SnapshotsService, Usage
from criproxy.containerd.version import ContainerdVersion, VersionService
from criproxy.errors import CriproxyError

__all__ = ["Containerd", "ContainerdVersion", "Plugin", "ServerInfo", "SnapshotInfo", "Usage"]


class Containerd:
    """One channel to one containerd, in one namespace, with a helper per service."""

    def __init__(self, address: str, namespace: str) -> None:
        self._channel = Channel(address, namespace)
        self._version = VersionService(self._channel)
        self.introspection = IntrospectionService(self._channel)
        self.snapshots = SnapshotsService(self._channel)

    @property
    def address(self) -> str:
        return self._channel.address

    @property
    def namespace(self) -> str:
        return self._channel.namespace

    async def version(self, timeout: float | None = None) -> ContainerdVersion:
        return await self._version.version(timeout=timeout)

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when containerd answers within `timeout`."""
        try:
            await self.version(timeout=timeout)
        except CriproxyError:
            return False
        return True

    async def close(self) -> None:
        await self._channel.close()
