"""A typed async client for containerd's gRPC API; knows nothing of Kubernetes.

Callers get the project's dataclasses and error types, never containerd's protobuf messages.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Generic, TypeVar, overload

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
    from collections.abc import AsyncIterator, Callable

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


_S = TypeVar("_S")


class _Helper(Generic[_S]):
    """A service helper made on first use and kept: a leased view (one per pod set-up) uses
    two or three of them, and each helper's stub makes a callable for every rpc."""

    def __init__(self, make: Callable[[Channel], _S]) -> None:
        self._make = make
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Helper[_S]: ...
    @overload
    def __get__(self, obj: Containerd, objtype: type | None = None) -> _S: ...
    def __get__(self, obj: Containerd | None, objtype: type | None = None) -> _S | _Helper[_S]:
        if obj is None:
            return self
        helper = self._make(obj._channel)
        obj.__dict__[self._name] = helper  # later lookups find it before the descriptor
        return helper


class Containerd:
    """One channel to one containerd, in one namespace, with a helper per service."""

    def __init__(self, address: str, namespace: str, *, _channel: Channel | None = None) -> None:
        self._channel = _channel or Channel(address, namespace)
        self._spares: dict[str, tuple[str, float]] = {}
        """A lease made ahead per prefix, and when (see `leased`)."""
        self._making: set[str] = set()

    _version = _Helper(VersionService)
    introspection = _Helper(IntrospectionService)
    snapshots = _Helper(SnapshotsService)
    content = _Helper(ContentService)
    images = _Helper(ImagesService)
    leases = _Helper(LeasesService)
    diff = _Helper(DiffService)
    events = _Helper(EventsService)
    containers = _Helper(ContainersService)
    tasks = _Helper(TasksService)

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

        With `release_in`, the next lease of the prefix is made there once this one is done
        with, so the next caller's path has no lease round trip (one spare per prefix, used
        while it is young; a spare left by a killed criproxy is swept with its other leases).
        """
        lease = self._take_spare(prefix, expire_after, release_in)
        if lease is None:
            lease = await self.leases.create(prefix, expire_after)
        try:
            yield self.with_lease(lease)
        finally:
            if release_in is not None:
                # after the work, not beside it: containerd writes its metadata one
                # transaction at a time
                release_in.start_soon(self._delete_lease, lease)
                if prefix not in self._making and prefix not in self._spares:
                    self._making.add(prefix)
                    release_in.start_soon(self._make_spare, prefix, expire_after)
            else:
                with anyio.CancelScope(shield=True):
                    await self._delete_lease(lease)

    def _take_spare(
        self, prefix: str, expire_after: datetime.timedelta, release_in: TaskGroup | None
    ) -> str | None:
        spare = self._spares.pop(prefix, None) if release_in is not None else None
        if spare is None:
            return None
        lease, made = spare
        if time.monotonic() - made < expire_after.total_seconds() / 4:
            return lease
        assert release_in is not None
        release_in.start_soon(self._delete_lease, lease)  # too old to trust its expiry
        return None

    async def _make_spare(self, prefix: str, expire_after: datetime.timedelta) -> None:
        try:
            lease = await self.leases.create(prefix, expire_after)
        except CriproxyError as err:
            log.debug("spare lease not made", prefix=prefix, error=err.message)
            return
        finally:
            self._making.discard(prefix)
        self._spares[prefix] = (lease, time.monotonic())

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
