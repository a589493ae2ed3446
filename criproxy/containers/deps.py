"""What the container call modules share: one small object, made once by the service."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containers.events import EventHub
from criproxy.containers.model import EXTENSION
from criproxy.errors import CriproxyError

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import TaskGroup

    from criproxy.config import Config
    from criproxy.containerd import Containerd, Mount
    from criproxy.containers.events import EventType
    from criproxy.containers.io import ContainerIO
    from criproxy.containers.model import Container
    from criproxy.images.service import ImageService
    from criproxy.sandbox.deps import PodDeps
    from criproxy.store import ContainerStore

log = structlog.get_logger("criproxy.containers")

KILL_WAIT = 10.0
"""How long to wait for a SIGKILLed task's exit before asking containerd directly."""
IO_DRAIN = 2.0
"""How long an exited container's output may still flow (children holding the FIFOs)."""
UNKNOWN_EXIT_CODE = 255


@dataclass(frozen=True)
class ContainerPaths:
    io_root: Path
    """Per container: its FIFOs (and those of its execs)."""
    volumes_root: Path
    """Per container: the image's volumes, copied out of the image."""
    idmap_root: Path
    """Per container of a pod with a user namespace: its idmapped layers."""
    checkpoint_root: Path
    """Per checkpoint under way: CRIU's images and work files (swept at start)."""
    restore_root: Path
    """Per container made from a checkpoint, until it starts: the checkpoint, unpacked."""
    image_volume_root: Path
    """Per container with image volumes: each image, mounted read-only."""

    @classmethod
    def of(cls, config: Config) -> ContainerPaths:
        return cls(
            io_root=config.state / "containers",
            volumes_root=config.root / "containers",
            idmap_root=config.state / "idmap",
            checkpoint_root=config.root / "checkpoints",  # CRIU's images: disk, not tmpfs
            restore_root=config.root / "restores",
            image_volume_root=config.state / "image-volumes",
        )


@dataclass
class ContainerDeps:
    config: Config
    containerd: Containerd
    images: ImageService
    pods: PodDeps
    store: ContainerStore
    paths: ContainerPaths
    events: EventHub = field(default_factory=EventHub)
    ios: dict[str, ContainerIO] = field(default_factory=dict)
    """The output pumps of running containers."""
    prepared_mounts: dict[str, list[Mount]] = field(default_factory=dict)
    """The rootfs mounts snapshot Prepare answered at create, until the start uses them."""
    tasks_deleted: set[str] = field(default_factory=set)
    """Containers whose task this process deleted at their exit: removal needs no look."""
    checkpointing: set[str] = field(default_factory=set)
    """Containers a checkpoint is dumping (one at a time: one's thaw must not resume a
    container another has paused)."""
    nri_stopped: dict[str, anyio.Event] = field(default_factory=dict)
    """Containers NRI's plugins were told stopped (once each; forgotten with them)."""
    exits: dict[str, anyio.Event] = field(default_factory=dict)
    """Set when a running container's exit has been recorded (StopContainer waits)."""
    _persisting: dict[str, anyio.Lock] = field(default_factory=dict)
    _tg: TaskGroup | None = None
    _started: anyio.Event = field(default_factory=anyio.Event)

    async def run(self) -> None:
        """Owns the containers' IO pumps; runs until cancelled (server shutdown)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._started.set()
            await anyio.sleep_forever()

    async def started(self) -> None:
        await self._started.wait()

    @property
    def background(self) -> TaskGroup:
        assert self._tg is not None, "ContainerDeps.run is not running"
        return self._tg

    async def persist(self, container: Container) -> None:
        """Write the container into its record; the caller stores it in memory. One
        container's writes go one at a time, in the order they were asked for."""
        async with self._persist_lock(container.id):
            await self.containerd.containers.set_extensions(
                container.id, {EXTENSION: container.to_json()}
            )

    def persist_later(self, container_id: str) -> None:
        """Write the container's state as it is when the write goes out, off the caller's
        path (StartContainer: should criproxy die first, recovery adopts the running task
        of a CREATED record). A later change's own write cannot be overtaken by this one."""
        self.background.start_soon(self._persist_latest, container_id)

    async def _persist_latest(self, container_id: str) -> None:
        async with self._persist_lock(container_id):
            latest = self.store.index.get(container_id)
            if latest is None:  # removed meanwhile
                return
            try:
                await self.containerd.containers.set_extensions(
                    container_id, {EXTENSION: latest.to_json()}
                )
            except CriproxyError as err:
                log.warning("container state not saved", container=container_id, error=err.message)

    def _persist_lock(self, container_id: str) -> anyio.Lock:
        lock = self._persisting.get(container_id)
        if lock is None:
            lock = self._persisting[container_id] = anyio.Lock(fast_acquire=True)
        return lock

    def forget(self, container_id: str) -> None:
        """A removed container's bookkeeping."""
        self.tasks_deleted.discard(container_id)
        self.prepared_mounts.pop(container_id, None)
        self._persisting.pop(container_id, None)
        self.nri_stopped.pop(container_id, None)

    async def persist_quietly(self, container: Container) -> None:
        """`persist`, where a failure must not undo the state change (it is logged)."""
        try:
            await self.persist(container)
        except CriproxyError as err:
            log.warning("container state not saved", container=container.id, error=err.message)

    async def delete_task_quietly(self, container_id: str, *, kill: bool = True) -> None:
        """Delete the task (killing it first unless it is known to have exited); a failure
        is only logged: the caller's state change stands."""
        tasks = self.containerd.tasks
        try:
            if kill:
                await tasks.kill_and_delete(container_id, KILL_WAIT)
            else:
                await tasks.delete(container_id)
        except CriproxyError as err:
            log.warning("task not deleted", container=container_id, error=err.message)
        else:
            self.tasks_deleted.add(container_id)

    def publish(self, kind: EventType, container: Container) -> None:
        """A GetContainerEvents event, with the pod and its containers after the change."""
        pods = self.pods.store
        sandbox = pods.index.get(container.sandbox_id) if pods.gate.is_open else None
        self.events.publish(
            kind, container.id, sandbox, self.store.pod_containers(container.sandbox_id)
        )


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
