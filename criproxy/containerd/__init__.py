"""A typed async client for containerd's gRPC API; knows nothing of Kubernetes.

Callers get the project's dataclasses and error types, never containerd's protobuf messages.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containerd.client import Channel
from criproxy.containerd.containers import ContainerRecord, ContainersService
from criproxy.containerd.content import ContentInfo, ContentService, ContentWriter
from criproxy.containerd.diff import DiffService
from criproxy.containerd.events import Event, EventsService, ImageEvent, TaskEvent
from criproxy.containerd.images import ImageRecord, ImagesService
from criproxy.containerd.introspection import IntrospectionService, Plugin, ServerInfo
from criproxy.containerd.leases import LeasesService
from criproxy.containerd.runtime_options import RuncOptions
from criproxy.containerd.snapshots import SnapshotInfo, SnapshotsService, Usage
from criproxy.containerd.tasks import MetricSample, TaskExitInfo, TasksService, TaskState
from criproxy.containerd.types import Descriptor, Mount
from criproxy.containerd.version import ContainerdVersion, VersionService
from criproxy.errors import CriproxyError

if TYPE_CHECKING:
    import datetime
    from collections.abc import AsyncIterator

    from anyio.abc import TaskGroup

log = structlog.get_logger("criproxy.containerd")

__all__ = [
    "ContainerRecord",
    "Containerd",
    "ContainerdVersion",
    "ContentInfo",
    "ContentWriter",
    "Descriptor",
    "Event",
    "ImageEvent",
    "ImageRecord",
    "MetricSample",
    "Mount",
    "Plugin",
    "RuncOptions",
    "ServerInfo",
    "SnapshotInfo",
    "TaskEvent",
    "TaskExitInfo",
    "TaskState",
    "Usage",
]


class Containerd:
    """One channel to one containerd, in one namespace, with a helper per service."""

    def __init__(self, address: str, namespace: str, *, _channel: Channel | None = None) -> None:
        self._channel = _channel or Channel(address, namespace)

    # Each helper is made on first use: a leased view (one per pod set-up) needs two or
    # three of them, and a helper's stub makes a callable for every rpc of its service.

    @functools.cached_property
    def _version(self) -> VersionService:
        return VersionService(self._channel)

    @functools.cached_property
    def introspection(self) -> IntrospectionService:
        return IntrospectionService(self._channel)

    @functools.cached_property
    def snapshots(self) -> SnapshotsService:
        return SnapshotsService(self._channel)

    @functools.cached_property
    def content(self) -> ContentService:
        return ContentService(self._channel)

    @functools.cached_property
    def images(self) -> ImagesService:
        return ImagesService(self._channel)

    @functools.cached_property
    def leases(self) -> LeasesService:
        return LeasesService(self._channel)

    @functools.cached_property
    def diff(self) -> DiffService:
        return DiffService(self._channel)

    @functools.cached_property
    def events(self) -> EventsService:
        return EventsService(self._channel)

    @functools.cached_property
    def containers(self) -> ContainersService:
        return ContainersService(self._channel)

    @functools.cached_property
    def tasks(self) -> TasksService:
        return TasksService(self._channel)

    def with_lease(self, lease: str) -> Containerd:
        """A view whose every call is made under `lease`; shares this connection."""
        return Containerd(self.address, self.namespace, _channel=self._channel.with_lease(lease))

    @contextlib.asynccontextmanager
    async def leased(
        self,
        prefix: str,
        expire_after: datetime.timedelta,
        *,
        release_in: TaskGroup | None = None,
    ) -> AsyncIterator[Containerd]:
        """A view under a fresh lease, deleted on the way out (in `release_in`'s background,
        off the caller's path, when given).

        What is created under it (a snapshot not yet referenced by a record) is safe from
        containerd's GC until then; a lease that cannot be deleted expires by itself.
        """
        lease = await self.leases.create(prefix, expire_after)
        try:
            yield self.with_lease(lease)
        finally:
            if release_in is not None:
                release_in.start_soon(self._delete_lease, lease)
            else:
                with anyio.CancelScope(shield=True):
                    await self._delete_lease(lease)

    async def _delete_lease(self, lease: str) -> None:
        try:
            await self.leases.delete(lease)
        except CriproxyError as err:
            log.warning("lease not deleted", lease=lease, error=err.message)

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
