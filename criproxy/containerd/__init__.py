"""A typed async client for containerd's gRPC API; knows nothing of Kubernetes.

Callers get the project's dataclasses and error types, never containerd's protobuf messages.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
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


@dataclass(eq=False)
class _SharedLease:
    lease: str
    view: Containerd
    made: float
    holders: int = 0


class Containerd:
    """One channel to one containerd, in one namespace, with a helper per service."""

    def __init__(self, address: str, namespace: str, *, _channel: Channel | None = None) -> None:
        self._channel = _channel or Channel(address, namespace)
        self._shared: dict[str, _SharedLease] = {}
        """The lease each prefix's callers share (see `leased`)."""
        self._sharing: dict[str, anyio.Lock] = {}

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
        """A view under a lease: what is created under it (a snapshot not yet referenced
        by a record) is safe from containerd's GC until the caller is done with it; a lease
        that cannot be deleted expires by itself.

        Without `release_in`, the lease is the caller's own, deleted on the way out. With
        it, one lease per prefix is shared by every caller while it is young (a quarter of
        its expiry), so a pod set-up makes no lease round trip at all; a lease past that is
        retired and deleted in `release_in`'s background once its last caller leaves. What
        a retired lease held is referenced by its records by then, and what a caller undid
        it removed itself. A shared lease left by a killed criproxy is swept with its other
        leases.
        """
        if release_in is None:
            lease = await self.leases.create(prefix, expire_after)
            try:
                yield self.with_lease(lease)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._delete_lease(lease)
            return
        shared = await self._join_shared(prefix, expire_after, release_in)
        try:
            yield shared.view
        finally:
            shared.holders -= 1
            if shared.holders == 0 and self._shared.get(prefix) is not shared:
                release_in.start_soon(self._delete_lease, shared.lease)

    async def _join_shared(
        self, prefix: str, expire_after: datetime.timedelta, release_in: TaskGroup
    ) -> _SharedLease:
        young = expire_after.total_seconds() / 4
        current = self._shared.get(prefix)
        if current is None or time.monotonic() - current.made >= young:
            lock = self._sharing.setdefault(prefix, anyio.Lock())
            async with lock:  # one lease made for a burst of set-ups, not one each
                current = self._shared.get(prefix)
                if current is None or time.monotonic() - current.made >= young:
                    lease = await self.leases.create(prefix, expire_after)
                    if current is not None and current.holders == 0:
                        release_in.start_soon(self._delete_lease, current.lease)
                    current = _SharedLease(lease, self.with_lease(lease), time.monotonic())
                    self._shared[prefix] = current
        current.holders += 1
        return current

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
