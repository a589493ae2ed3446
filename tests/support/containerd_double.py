"""An in-memory stand-in for criproxy's containerd client, for unit tests of the order and
undo logic of lifecycle calls (integration tests use a real containerd).

It keeps records, snapshots, tasks and leases in dicts, logs every call in `calls`
(`"tasks.start c1"`, ...), and fails a call on demand: `fail["tasks.start"] = Internal(...)`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from criproxy.containerd import ContainerRecord, Mount, TaskExitInfo, TaskState
from criproxy.containerd.leases import Lease
from criproxy.errors import AlreadyExists, CriproxyError, NotFound


@dataclass
class _State:
    calls: list[str] = field(default_factory=list)
    fail: dict[str, CriproxyError] = field(default_factory=dict)
    records: dict[str, ContainerRecord] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)
    """Snapshot key -> parent."""
    tasks: dict[str, TaskState] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def call(self, name: str, subject: str) -> None:
        self.calls.append(f"{name} {subject}")
        error = self.fail.get(name)
        if error is not None:
            raise error


class _Service:
    def __init__(self, state: _State) -> None:
        self._s = state


class _Containers(_Service):
    async def create(self, record: ContainerRecord) -> None:
        self._s.call("containers.create", record.id)
        if record.id in self._s.records:
            raise AlreadyExists(f"container {record.id} exists")
        self._s.records[record.id] = record

    async def delete(self, container_id: str) -> None:
        self._s.call("containers.delete", container_id)
        self._s.records.pop(container_id, None)

    async def set_extensions(self, container_id: str, extensions: dict[str, bytes]) -> None:
        self._s.call("containers.set_extensions", container_id)
        record = self._s.records[container_id]
        self._s.records[container_id] = replace(
            record, extensions={**record.extensions, **extensions}
        )

    async def set_spec(self, container_id: str, spec: dict[str, Any]) -> None:
        self._s.call("containers.set_spec", container_id)
        self._s.records[container_id] = replace(self._s.records[container_id], spec=spec)

    async def list(self, *filters: str) -> list[ContainerRecord]:
        self._s.call("containers.list", ",".join(filters))
        return list(self._s.records.values())


class _Snapshots(_Service):
    async def prepare(self, snapshotter: str, key: str, parent: str) -> list[Mount]:
        self._s.call("snapshots.prepare", key)
        if key in self._s.snapshots:
            raise AlreadyExists(f"snapshot {key} exists")
        self._s.snapshots[key] = parent
        return [Mount(type="bind", source=f"/snapshots/{key}", options=("rbind",))]

    async def mounts(self, snapshotter: str, key: str) -> list[Mount]:
        self._s.call("snapshots.mounts", key)
        if key not in self._s.snapshots:
            raise NotFound(f"snapshot {key} not found")
        return [Mount(type="bind", source=f"/snapshots/{key}", options=("rbind",))]

    async def remove(self, snapshotter: str, key: str) -> None:
        self._s.call("snapshots.remove", key)
        self._s.snapshots.pop(key, None)


class _Tasks(_Service):
    async def create(self, container_id: str, rootfs: Any, **_: Any) -> int:
        self._s.call("tasks.create", container_id)
        pid = next(self._s.pids)
        self._s.tasks[container_id] = TaskState(container_id, pid, "created", 0, 0)
        return pid

    async def start(self, container_id: str, exec_id: str = "") -> int:
        self._s.call("tasks.start", container_id)
        task = self._s.tasks[container_id]
        self._s.tasks[container_id] = replace(task, status="running")
        return task.pid

    async def get(self, container_id: str) -> TaskState | None:
        return self._s.tasks.get(container_id)

    async def list(self) -> list[TaskState]:
        return list(self._s.tasks.values())

    async def kill(self, container_id: str, signum: int, **_: Any) -> None:
        self._s.call("tasks.kill", container_id)
        task = self._s.tasks.get(container_id)
        if task is None:
            raise NotFound(f"task {container_id} not found")
        self._s.tasks[container_id] = replace(task, status="stopped", exit_status=128 + signum)

    async def delete(self, container_id: str) -> TaskExitInfo | None:
        self._s.call("tasks.delete", container_id)
        task = self._s.tasks.pop(container_id, None)
        return TaskExitInfo(task.pid, task.exit_status, 1) if task else None

    async def kill_and_delete(
        self, container_id: str, wait: float, *, running: bool = False
    ) -> TaskExitInfo | None:
        task = self._s.tasks.get(container_id)
        if task is None:
            return None
        if task.status != "stopped":
            await self.kill(container_id, 9)
        return await self.delete(container_id)


class _Leases(_Service):
    async def create(self, prefix: str, expire_after: Any) -> str:
        lease_id = f"{prefix}-{len(self._s.leases)}"
        self._s.call("leases.create", lease_id)
        self._s.leases[lease_id] = Lease(lease_id, {})
        return lease_id

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        self._s.call("leases.delete", lease_id)
        self._s.leases.pop(lease_id, None)

    async def list(self, *filters: str) -> list[Lease]:
        return list(self._s.leases.values())


class ContainerdDouble:
    namespace = "k8s.io"

    def __init__(self) -> None:
        self.state = _State()
        self.containers = _Containers(self.state)
        self.snapshots = _Snapshots(self.state)
        self.tasks = _Tasks(self.state)
        self.leases = _Leases(self.state)

    @property
    def calls(self) -> list[str]:
        return self.state.calls

    @property
    def fail(self) -> dict[str, CriproxyError]:
        return self.state.fail

    @contextlib.asynccontextmanager
    async def leased(self, prefix: str, expire_after: Any, **_: Any) -> AsyncIterator[Any]:
        lease = await self.leases.create(prefix, expire_after)
        try:
            yield self
        finally:
            await self.leases.delete(lease)
