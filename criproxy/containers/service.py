"""The containers domain service: create, start, stop, remove, status, list, exec, logs.

A container is a containerd container record (with criproxy's JSON as an extension) and,
once started, a task whose stdout/stderr reach criproxy through FIFOs. Every state change
of a container runs in its pod's loop, so an exit event and a RemoveContainer never race;
StopContainer waits outside the loop, for the exit the loop records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import secrets
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy import host, records
from criproxy.containerd import ContainerRecord, TaskEvent
from criproxy.containers import spec as spec_builder
from criproxy.containers.events import EventHub, EventType
from criproxy.containers.io import ContainerIO, ExecIO
from criproxy.containers.model import (
    EXTENSION,
    KIND,
    REASON_OOM_KILLED,
    Container,
    ImageInfo,
)
from criproxy.errors import (
    AlreadyExists,
    CriproxyError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from criproxy.oci.container import (
    ContainerResources,
    linux_resources,
    merge_resources,
    with_resources,
)
from criproxy.sandbox import idmap
from criproxy.sandbox.model import KIND_LABEL, SANDBOX_ID_LABEL
from criproxy.sandbox.service import cri_labels, runc_options

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from anyio.abc import TaskGroup

    from criproxy.config import Config
    from criproxy.containerd import Containerd, Event, TaskState
    from criproxy.images.service import ImageService
    from criproxy.images.store import Image
    from criproxy.oci.container import ContainerConfig
    from criproxy.sandbox.model import PodMetadata, Sandbox
    from criproxy.sandbox.service import SandboxService

log = structlog.get_logger("criproxy.containers")

_SETUP_LEASE = datetime.timedelta(hours=1)
KILL_WAIT = 10.0
"""How long to wait for a SIGKILLed task's exit before asking containerd directly."""
IO_DRAIN = 2.0
"""How long an exited container's output may still flow (children holding the FIFOs)."""
START_ERROR_EXIT_CODE = 128
UNKNOWN_EXIT_CODE = 255


class ContainerService:
    def __init__(
        self,
        config: Config,
        containerd: Containerd,
        images: ImageService,
        sandboxes: SandboxService,
    ) -> None:
        self._config = config
        self._containerd = containerd
        self._images = images
        self._sandboxes = sandboxes
        self._containers: dict[str, Container] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}
        """Reserved name -> container id."""
        self._undelivered: set[str] = set()
        """Containers whose CreateContainer call went away before the answer."""
        self._exits: dict[str, anyio.Event] = {}
        self._ios: dict[str, ContainerIO] = {}
        self._tg: TaskGroup | None = None
        self._started = anyio.Event()
        self._recovered = anyio.Event()
        self.events = EventHub()
        self.io_root = config.state / "containers"
        self.volumes_root = config.root / "containers"
        sandboxes.on_stop(self._stop_pod_containers)
        sandboxes.on_remove(self._remove_pod_containers)
        sandboxes.on_sweep(self._sweep)

    async def run(self) -> None:
        """Owns the containers' IO pumps; runs until cancelled (server shutdown)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._started.set()
            await anyio.sleep_forever()

    def _sweep(self, tasks: Mapping[str, TaskState]) -> None:
        """The pods' periodic sweep of containerd's tasks: a running container whose task
        is gone or stopped had an exit whose event was lost; its pod's loop records it."""
        for container in list(self._containers.values()):
            task = tasks.get(container.id)
            if container.state == "running" and (task is None or task.status == "stopped"):
                self._sandboxes.post_to_pod(
                    container.sandbox_id, functools.partial(self._reconcile, container.id)
                )

    # --- queries (memory only) -------------------------------------------------------

    def _require_recovered(self) -> None:
        if not self._recovered.is_set():
            raise Unavailable("criproxy is still loading the containers from containerd; retry")

    def resolve(self, container_id: str) -> Container | None:
        if not container_id:
            raise InvalidArgument("container_id is required")
        self._require_recovered()
        return records.by_id_or_prefix(self._containers, container_id, "container")

    def get(self, container_id: str) -> Container:
        return records.required(self.resolve(container_id), "container", container_id)

    def all(self) -> list[Container]:
        self._require_recovered()
        return list(self._containers.values())

    def all_if_ready(self) -> list[Container]:
        """Every container, or none before the first recovery (background work)."""
        return list(self._containers.values()) if self._recovered.is_set() else []

    def spec(self, container_id: str) -> dict[str, Any] | None:
        return self._specs.get(container_id)

    def runtime(self, container: Container) -> tuple[str, dict[str, object] | None]:
        """The shim and its options (as JSON) the container runs with, for verbose status."""
        sandbox = self._sandboxes.resolve(container.sandbox_id)
        if sandbox is None:
            return "", None
        handler = self._sandboxes.handler(sandbox.runtime_handler)
        options = runc_options(handler, self._config.cgroup_driver)
        return handler.runtime_type, dataclasses.asdict(options) if options else None

    @property
    def snapshotter(self) -> str:
        return self._config.containerd.snapshotter

    def pod_containers(self, sandbox_id: str) -> tuple[Container, ...]:
        return tuple(c for c in self._containers.values() if c.sandbox_id == sandbox_id)

    def by_pod(self, sandbox_ids: list[str]) -> dict[str, list[Container]]:
        """Each of these pods' containers, from one pass over all of them."""
        members: dict[str, list[Container]] = {i: [] for i in sandbox_ids}
        for c in self._containers.values():
            if c.sandbox_id in members:
                members[c.sandbox_id].append(c)
        return members

    # --- create ------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        self._require_recovered()
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        image = self._images.status(config.image)
        if image is None:
            raise NotFound(f"image {config.image!r} not found: pull it first")
        pod = sandbox.config
        key = _name_key(config, pod.metadata)
        existing = self._names.get(key)
        if existing is not None:
            if existing in self._undelivered and existing in self._containers:
                # the kubelet's earlier call timed out while the container was being made
                self._undelivered.discard(existing)
                return existing
            raise AlreadyExists(
                f"container name {key!r} is already reserved for container {existing}"
            )
        container_id = secrets.token_hex(32)
        self._names[key] = container_id  # before any await: one container per name
        bound = log.bind(container=container_id, sandbox=sandbox.id, name=config.name)
        log_path = _log_path(pod.log_directory, config.log_path)
        try:
            if log_path:
                await anyio.to_thread.run_sync(_log_dir, pod.log_directory, log_path, config.name)
        except BaseException:
            self._names.pop(key, None)
            raise
        job = functools.partial(
            self._create, container_id, sandbox, config, image, key=key, log_path=log_path
        )
        try:
            container: Container = await self._sandboxes.in_pod_loop(sandbox.id, job)
        except Exception:
            raise  # the job failed: it released the name itself
        except BaseException:
            # Cancelled: the job still runs to its end in the pod's loop; a retry gets it.
            self._undelivered.add(container_id)
            raise
        bound.info("container created")
        self._publish("created", container)
        return container.id

    async def _create(
        self,
        container_id: str,
        sandbox: Sandbox,
        config: ContainerConfig,
        image: Image,
        *,
        key: str,
        log_path: str,
    ) -> Container:
        snapshotter = self._config.containerd.snapshotter
        handler = self._sandboxes.handler(sandbox.runtime_handler)
        current = self._sandboxes.get(sandbox.id)
        if current.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        undos: list[Callable[[], Awaitable[Any]]] = []
        try:
            async with self._containerd.leased(
                "criproxy-container", _SETUP_LEASE, release_in=self._tg
            ) as cd:
                mounts = await cd.snapshots.prepare(
                    snapshotter, container_id, image.content.chain_id
                )
                undos.append(lambda: self._containerd.snapshots.remove(snapshotter, container_id))
                target_pid = self._target_pid(current, config)
                built = await anyio.to_thread.run_sync(
                    functools.partial(
                        spec_builder.build,
                        container_id,
                        config,
                        image,
                        current,
                        mounts=mounts,
                        cfg=self._config,
                        volumes_dir=self.volumes_root / container_id,
                        target_pid=target_pid,
                    )
                )
                if config.resources is not None:
                    config = dataclasses.replace(
                        config, resources=_effective(config.resources, built.swap_controller)
                    )
                container = Container(
                    id=container_id,
                    sandbox_id=sandbox.id,
                    config=config,
                    image=ImageInfo(
                        id=image.id,
                        ref=image.repo_digests[0] if image.repo_digests else image.id,
                        name=image.repo_tags[0] if image.repo_tags else config.image,
                    ),
                    created_at_ns=time.time_ns(),
                    log_path=log_path,
                    stop_signal=config.stop_signal or built.stop_signal,
                    user=built.user,
                    io_dir=str(self.io_root / container_id),
                )
                record = ContainerRecord(
                    id=container_id,
                    labels={
                        KIND_LABEL: KIND,
                        SANDBOX_ID_LABEL: sandbox.id,
                        "io.kubernetes.container.name": config.name,
                        **cri_labels(sandbox.config),
                    },
                    image=container.image.name,
                    runtime=handler.runtime_type,
                    runtime_options=runc_options(handler, self._config.cgroup_driver),
                    spec=built.spec,
                    snapshotter=snapshotter,
                    snapshot_key=container_id,
                    extensions={EXTENSION: container.to_json()},
                )
                await cd.containers.create(record)
        except BaseException:
            self._names.pop(key, None)
            self._undelivered.discard(container_id)
            with anyio.CancelScope(shield=True):
                for undo in reversed(undos):
                    try:
                        await undo()
                    except Exception as err:
                        log.warning("clean-up step failed", container=container_id, error=str(err))
                await anyio.to_thread.run_sync(_remove_tree, self.io_root / container_id)
                await anyio.to_thread.run_sync(_remove_tree, self.volumes_root / container_id)
            raise
        self._containers[container_id] = container
        self._specs[container_id] = built.spec
        return container

    def _target_pid(self, sandbox: Sandbox, config: ContainerConfig) -> int:
        if config.security.pid != "target":
            return 0
        target = self._containers.get(config.security.target_id)
        if target is None or target.sandbox_id != sandbox.id:
            raise NotFound(
                f"target container {config.security.target_id!r} not found in pod {sandbox.id}"
            )
        if target.state != "running" or not target.pid:
            raise FailedPrecondition(f"target container {target.id} is not running")
        return target.pid

    # --- start -------------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        container = self.get(container_id)
        await self._sandboxes.in_pod_loop(container.sandbox_id, lambda: self._start(container.id))
        self._publish("started", self._containers[container.id])

    async def _start(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id!r} not found")
        if container.state != "created":
            raise FailedPrecondition(
                f"container {container_id} is {container.state.upper()}, not CREATED"
            )
        sandbox = self._sandboxes.get(container.sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        handler = self._sandboxes.handler(sandbox.runtime_handler)
        tasks = self._containerd.tasks
        cfg = container.config
        io = await ContainerIO.create(
            Path(container.io_dir),
            container.id,
            log_path=container.log_path,
            stdin=cfg.stdin,
            tty=cfg.tty,
            stdin_once=cfg.stdin_once,
            max_line_size=self._config.max_container_log_line_size,
        )
        try:
            mounts = await self._containerd.snapshots.mounts(
                self._config.containerd.snapshotter, container.id
            )
            userns = sandbox.config.security.userns
            if sandbox.userns and userns is not None:
                mounts = await anyio.to_thread.run_sync(
                    idmap.idmapped_rootfs,
                    mounts,
                    sandbox.userns,
                    self._sandboxes.idmap_root / container.id,
                    userns,
                )
            exit_event = anyio.Event()
            self._exits[container.id] = exit_event
            assert self._tg is not None
            self._tg.start_soon(io.run)
            self._ios[container.id] = io
            await tasks.create(
                container.id,
                mounts,
                stdin=io.fifos.stdin,
                stdout=io.fifos.stdout,
                stderr=io.fifos.stderr,
                terminal=cfg.tty,
                runtime_path=handler.runtime_path,
            )
            started_at = time.time_ns()  # before: a quick exit must not precede it
            pid = await tasks.start(container.id)
        except BaseException as err:
            failure = err if isinstance(err, CriproxyError) else Internal(f"start failed: {err!r}")
            with anyio.CancelScope(shield=True):
                await self._start_failed(container, failure)
            if isinstance(err, Exception) and failure is not err:
                raise failure from None
            raise
        running = container.with_changes(state="running", pid=pid, started_at_ns=started_at)
        self._containers[container.id] = running
        await self._persist(running)
        log.info("container started", container=container.id, pid=pid)

    async def _start_failed(self, container: Container, err: CriproxyError) -> None:
        """As containerd: the container is EXITED with StartError and the runtime's message."""
        await self._delete_task_quietly(container.id)
        io = self._ios.pop(container.id, None)
        if io is not None:
            io.close()
        await anyio.to_thread.run_sync(idmap.release, self._sandboxes.idmap_root / container.id)
        failed = container.with_changes(
            state="exited",
            exit_code=START_ERROR_EXIT_CODE,
            finished_at_ns=time.time_ns(),
            started_at_ns=0,
            reason="StartError",
            message=err.message,
        )
        self._containers[container.id] = failed
        exit_event = self._exits.pop(container.id, None)
        if exit_event is not None:
            exit_event.set()
        await self._persist_quietly(failed)

    # --- exits -------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        payload = event.payload
        if not isinstance(payload, TaskEvent):
            return
        container = self._containers.get(payload.container_id)
        if container is None:
            return
        if payload.action == "oom":
            self._sandboxes.post_to_pod(
                container.sandbox_id, functools.partial(self._oom, container.id)
            )
        elif payload.action == "exit" and payload.main_process:
            self._sandboxes.post_to_pod(
                container.sandbox_id,
                functools.partial(
                    self._exited, container.id, payload.exit_status, payload.exited_at_ns
                ),
            )

    async def _oom(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None or container.oom_killed:
            return
        updated = container.with_changes(oom_killed=True)
        self._containers[container_id] = updated
        await self._persist(updated)

    async def _exited(self, container_id: str, exit_code: int, exited_at_ns: int) -> None:
        """The container's process exited: reap the task, drain its output, record it."""
        container = self._containers.get(container_id)
        if container is None or container.state != "running":
            return
        await self._delete_task_quietly(container_id, kill=False)
        io = self._ios.pop(container_id, None)
        if io is not None:
            await io.wait_drained(IO_DRAIN)
            io.close()
        oom = container.oom_killed
        exited = container.with_changes(
            state="exited",
            pid=0,
            exit_code=exit_code,
            finished_at_ns=exited_at_ns or time.time_ns(),
            reason=REASON_OOM_KILLED if oom else "",
        )
        self._containers[container_id] = exited
        try:
            await self._persist(exited)
        finally:
            exit_event = self._exits.pop(container_id, None)
            if exit_event is not None:
                exit_event.set()
        log.info("container exited", container=container_id, exit_code=exit_code)
        self._publish("stopped", exited)

    # --- stop and remove ---------------------------------------------------------------

    async def stop(self, container_id: str, timeout: float) -> None:
        """The stop signal, then SIGKILL after `timeout` seconds; idempotent, also for an
        unknown id."""
        container = self.resolve(container_id)
        if container is None:
            return  # as critest's Idempotence spec requires (and RemoveContainer does)
        await self._stop(container, timeout)

    async def _stop(self, container: Container, timeout: float) -> None:
        if container.state != "running":
            return
        exited = self._exits.get(container.id)
        if exited is None:
            return
        if timeout > 0:
            await self._kill(container, _signal_number(container.stop_signal), exited)
            with anyio.move_on_after(timeout):
                await exited.wait()
            if exited.is_set():
                return
        await self._kill(container, signal.SIGKILL, exited)
        with anyio.move_on_after(KILL_WAIT):
            await exited.wait()
        if not exited.is_set():
            # The exit event was lost (or containerd is slow): ask containerd directly.
            await self._sandboxes.in_pod_loop(
                container.sandbox_id, functools.partial(self._reconcile, container.id)
            )
            if not exited.is_set():
                raise DeadlineExceeded(f"container {container.id} did not exit after SIGKILL")

    async def _delete_task(self, container_id: str) -> None:
        """Kill (if it runs) and delete the container's task; none is fine."""
        tasks = self._containerd.tasks
        state = await tasks.get(container_id)
        if state is None:
            return
        if state.status in ("running", "paused", "pausing", "created"):
            with contextlib.suppress(NotFound):
                await tasks.kill(container_id, signal.SIGKILL, all_processes=True)
            with contextlib.suppress(DeadlineExceeded):
                await tasks.wait(container_id, timeout=KILL_WAIT)
        await tasks.delete(container_id)

    async def _kill(self, container: Container, signum: int, exited: anyio.Event) -> None:
        """Signal the task; a task that is exiting right now (its shim gone, the exit not yet
        recorded by the pod loop) is not an error."""
        try:
            await self._containerd.tasks.kill(
                container.id, signum, all_processes=signum == signal.SIGKILL
            )
        except NotFound:
            pass
        except CriproxyError:
            with anyio.move_on_after(KILL_WAIT):
                await exited.wait()
            if not exited.is_set():
                raise

    async def remove(self, container_id: str) -> None:
        """Stop (SIGKILL) if running, then remove the task, record, snapshot and FIFOs.
        The log file stays: the kubelet removes it. Idempotent."""
        container = self.resolve(container_id)
        if container is None:
            return
        await self._stop(container, 0)
        try:
            await self._sandboxes.in_pod_loop(
                container.sandbox_id, lambda: self._remove(container.id)
            )
        except NotFound:
            await self._remove(container.id)  # the pod is gone already

    async def _remove(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            return
        if container.state == "running":
            raise FailedPrecondition(f"container {container_id} is still running")
        await self._delete_task(container_id)  # first: it holds the rootfs
        idmaps = self._sandboxes.idmap_root / container_id
        volumes = self.volumes_root / container_id

        def remove_files() -> None:
            idmap.release(idmaps)  # before any rmtree: nothing may reach into a layer
            _remove_tree(Path(container.io_dir))
            _remove_tree(volumes)

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                self._containerd.snapshots.remove, self._config.containerd.snapshotter, container_id
            )
            tg.start_soon(anyio.to_thread.run_sync, remove_files)
        # Last: while the record exists, a criproxy killed above finishes the job after restart.
        await self._containerd.containers.delete(container_id)
        self._containers.pop(container_id, None)
        self._specs.pop(container_id, None)
        self._names = {k: v for k, v in self._names.items() if v != container_id}
        self._undelivered.discard(container_id)
        log.info("container removed", container=container_id)
        self._publish("deleted", container)

    async def _stop_pod_containers(self, sandbox_id: str) -> None:
        """Before a pod stops: its containers are killed (as containerd's StopPodSandbox)."""
        async with anyio.create_task_group() as tg:
            for container in self.pod_containers(sandbox_id):
                tg.start_soon(self._stop, container, 0)

    async def _remove_pod_containers(self, sandbox_id: str) -> None:
        for container in self.pod_containers(sandbox_id):
            await self.remove(container.id)

    # --- reconcile and recovery -------------------------------------------------------

    async def _reconcile(self, container_id: str) -> None:
        """In the pod's loop: a running container whose task is gone or stopped has exited."""
        container = self._containers.get(container_id)
        if container is None or container.state != "running":
            return
        task = await self._containerd.tasks.get(container_id)
        if task is not None and task.status in ("running", "paused", "pausing", "created"):
            return
        await self._exited(
            container_id,
            task.exit_status if task else UNKNOWN_EXIT_CODE,
            (task.exited_at_ns if task else 0) or time.time_ns(),
        )

    async def recover(self) -> None:
        """At start: rebuild every container from its record and its task, and re-attach the
        output of running ones. After a reconnect: reconcile running containers."""
        await self._started.wait()
        if self._recovered.is_set():
            for container in list(self._containers.values()):
                if container.state == "running":
                    self._sandboxes.post_to_pod(
                        container.sandbox_id, functools.partial(self._reconcile, container.id)
                    )
            return
        records = await self._containerd.containers.list(f'labels."{KIND_LABEL}"=={KIND}')
        tasks = {t.container_id: t for t in await self._containerd.tasks.list()}
        for record in records:
            raw = record.extensions.get(EXTENSION)
            if raw is None:
                continue
            try:
                container = Container.from_json(raw)
            except Exception as err:  # one bad record must not stop the recovery
                log.error("container record unreadable", container=record.id, error=repr(err))
                continue
            container = await self._recovered_state(container, tasks.get(container.id))
            self._containers[container.id] = container
            self._specs[container.id] = record.spec
            sandbox = self._sandboxes.resolve(container.sandbox_id)
            if sandbox is not None:
                self._names[_name_key(container.config, sandbox.config.metadata)] = container.id
        await self._release_orphaned_idmaps()
        self._recovered.set()
        log.info("containers recovered", containers=len(self._containers))

    async def _release_orphaned_idmaps(self) -> None:
        """What containers that no longer exist left (a kill -9 before their record was made
        or during their removal): idmapped layers first, then FIFO and volume dirs."""
        root = self._sandboxes.idmap_root
        known = set(self._containers) | {s.id for s in self._sandboxes.pods_if_ready()}

        def orphans(directory: Path) -> list[Path]:
            try:
                return [p for p in directory.iterdir() if p.name not in known]
            except FileNotFoundError:
                return []

        for path in await anyio.to_thread.run_sync(orphans, root):
            await anyio.to_thread.run_sync(idmap.release, path)
        for directory in (self.io_root, self.volumes_root):
            for path in await anyio.to_thread.run_sync(orphans, directory):
                log.info("removing what a container without a record left", path=str(path))
                await anyio.to_thread.run_sync(_remove_tree, path)

    async def _recovered_state(self, container: Container, task: TaskState | None) -> Container:
        """The container as its task says it is; its output re-attached when it runs.

        A CREATED record with a task is a criproxy killed inside StartContainer: a running
        task is adopted (RUNNING), any other is deleted (still CREATED, startable again).
        """
        alive = task is not None and task.status in ("running", "paused", "pausing")
        if container.state == "created" and task is not None:
            if not alive:
                await self._delete_task_quietly(container.id)
                return container
            container = container.with_changes(
                state="running", pid=task.pid, started_at_ns=time.time_ns()
            )
            await self._persist_quietly(container)
        if container.state != "running":
            return container
        if alive:
            await self._reattach(container)
            return container
        # It exited while criproxy was down: record what containerd knows.
        if task is not None:
            await self._delete_task_quietly(container.id, kill=False)
        exited = container.with_changes(
            state="exited",
            pid=0,
            exit_code=task.exit_status if task else UNKNOWN_EXIT_CODE,
            finished_at_ns=(task.exited_at_ns if task else 0) or time.time_ns(),
            reason=(REASON_OOM_KILLED if container.oom_killed else "") if task else "Unknown",
        )
        await self._persist_quietly(exited)
        return exited

    async def _reattach(self, container: Container) -> None:
        """Resume reading a running container's output; one container's broken FIFO or log
        file is logged and must not stop the recovery of the others."""
        self._exits.setdefault(container.id, anyio.Event())
        if container.id in self._ios:
            return
        try:
            io = await ContainerIO.attach(
                Path(container.io_dir),
                container.id,
                log_path=container.log_path,
                stdin=container.config.stdin,
                tty=container.config.tty,
                max_line_size=self._config.max_container_log_line_size,
            )
        except CriproxyError as err:
            log.error("container output not re-attached", container=container.id, error=err.message)
            return
        assert self._tg is not None
        self._tg.start_soon(io.run)
        self._ios[container.id] = io

    async def _delete_task_quietly(self, container_id: str, *, kill: bool = True) -> None:
        """Delete the task (killing it first unless it is known to have exited); a failure
        is only logged: the caller's state change stands."""
        try:
            if kill:
                await self._delete_task(container_id)
            else:
                await self._containerd.tasks.delete(container_id)
        except CriproxyError as err:
            log.warning("task not deleted", container=container_id, error=err.message)

    async def _persist_quietly(self, container: Container) -> None:
        try:
            await self._persist(container)
        except CriproxyError as err:
            log.warning("container state not saved", container=container.id, error=err.message)

    # --- exec, logs, resources ----------------------------------------------------------

    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout: float
    ) -> tuple[bytes, bytes, int]:
        """Run `cmd` in the container; (stdout, stderr, exit code), each stream capped at
        16 MiB. Past `timeout` (0: none) the process is killed and DEADLINE_EXCEEDED raised."""
        container = self.get(container_id)
        if container.state != "running":
            raise FailedPrecondition(
                f"container {container.id} is {container.state.upper()}, not RUNNING"
            )
        if not cmd:
            raise InvalidArgument("cmd is required")
        spec = self._specs.get(container.id) or {}
        process = dict(spec.get("process") or {})
        process["args"] = list(cmd)
        process["terminal"] = False
        exec_id = secrets.token_hex(16)
        tasks = self._containerd.tasks
        io = await ExecIO.create(Path(container.io_dir), exec_id)  # capped at 16 MiB
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(io.run)
                try:
                    await tasks.exec(
                        container.id,
                        exec_id,
                        process,
                        stdout=io.fifos.stdout,
                        stderr=io.fifos.stderr,
                    )
                    await tasks.start(container.id, exec_id)
                    exit_code = await self._wait_exec(container.id, exec_id, cmd, timeout)
                    await io.wait_drained(IO_DRAIN)
                except BaseException:
                    with anyio.CancelScope(shield=True), contextlib.suppress(CriproxyError):
                        await tasks.kill(container.id, signal.SIGKILL, exec_id=exec_id)
                        await tasks.wait(container.id, exec_id, KILL_WAIT)
                    raise
                finally:
                    with anyio.CancelScope(shield=True):
                        try:
                            await tasks.delete_process(container.id, exec_id)
                        except CriproxyError as err:
                            log.debug("exec not deleted", exec_id=exec_id, error=err.message)
                    tg.cancel_scope.cancel()
        finally:
            io.close()
        return io.stdout, io.stderr, exit_code

    async def _wait_exec(
        self, container_id: str, exec_id: str, cmd: list[str], timeout: float
    ) -> int:
        tasks = self._containerd.tasks
        deadline = time.monotonic() + timeout
        try:
            exited = await tasks.wait(container_id, exec_id, timeout if timeout > 0 else None)
        except CriproxyError:
            # containerd's own context may expire first and answer UNKNOWN for it.
            if timeout <= 0 or time.monotonic() < deadline:
                raise
        else:
            return exited.exit_status
        # exec_sync's failure path kills the process and waits for it.
        raise DeadlineExceeded(f"command {shlex.join(cmd)!r} timed out after {timeout:g}s (killed)")

    async def reopen_log(self, container_id: str) -> None:
        container = self.get(container_id)
        if container.state != "running":
            raise FailedPrecondition(f"container {container.id} is not running")
        io = self._ios.get(container.id)
        if io is None:
            raise FailedPrecondition(f"container {container.id} has no output to reopen")
        await io.reopen()

    async def update_resources(self, container_id: str, resources: ContainerResources) -> None:
        """As containerd: unset fields keep their values; the merged limits go to the running
        task and into the record's spec (a created container starts with them; an exited
        one only records them)."""
        container = self.get(container_id)

        async def update() -> None:
            current = self._containers.get(container.id)
            if current is None:
                raise NotFound(f"container {container_id!r} not found")
            merged = merge_resources(current.config.resources, resources)
            if resources.memory_limit_in_bytes and not resources.memory_swap_limit_in_bytes:
                # swap follows a new memory limit (as containerd re-applies WithResources)
                merged = dataclasses.replace(merged, memory_swap_limit_in_bytes=0)
            swap, hugetlb = await anyio.to_thread.run_sync(_host_limits)
            merged = _effective(merged, swap)
            oci = linux_resources(merged, swap_controller=swap, hugetlb_controller=hugetlb)
            if current.state == "running":
                # a task that just exited (its exit not yet recorded) keeps only the spec
                with contextlib.suppress(NotFound):
                    await self._containerd.tasks.update(current.id, oci)
            spec = with_resources(self._specs.get(current.id) or {}, oci)
            await self._containerd.containers.set_spec(current.id, spec)
            self._specs[current.id] = spec
            updated = current.with_changes(
                config=dataclasses.replace(current.config, resources=merged)
            )
            await self._persist(updated)
            self._containers[current.id] = updated

        await self._sandboxes.in_pod_loop(container.sandbox_id, update)

    # --- helpers ---------------------------------------------------------------------

    async def _persist(self, container: Container) -> None:
        await self._containerd.containers.set_extensions(
            container.id, {EXTENSION: container.to_json()}
        )

    def _publish(self, kind: EventType, container: Container) -> None:
        sandbox = (
            self._sandboxes.resolve(container.sandbox_id) if self._recovered.is_set() else None
        )
        self.events.publish(kind, container.id, sandbox, self.pod_containers(container.sandbox_id))


def _name_key(config: ContainerConfig, pod: PodMetadata) -> str:
    """What makes a container's name unique (as containerd's CRI builds it)."""
    return f"{config.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.attempt}"


def _effective(resources: ContainerResources, swap_controller: bool) -> ContainerResources:
    """The limits as applied: swap defaults to the memory limit where the host limits swap
    (containerd's WithResources), and the status reports that value."""
    if resources.memory_swap_limit_in_bytes or not resources.memory_limit_in_bytes:
        return resources
    if not swap_controller:
        return resources
    return dataclasses.replace(
        resources, memory_swap_limit_in_bytes=resources.memory_limit_in_bytes
    )


def _host_limits() -> tuple[bool, bool]:
    """(swap limits, hugetlb on a usable hierarchy) on this host. Blocking."""
    return host.swap_controller_available(), "hugetlb" in host.cgroup_info().controllers


def _log_dir(log_directory: str, log_path: str, name: str) -> None:
    """The pod's log directory must exist (the kubelet makes it before the pod); a
    directory inside it that the log path names is made, as containerd does."""
    if not os.path.isdir(log_directory):
        raise FailedPrecondition(
            f"the pod's log directory {log_directory!r} does not exist "
            f"(container {name!r} logs to {log_path!r})"
        )
    os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)


def _log_path(log_directory: str, log_path: str) -> str:
    if not log_path or not log_directory:
        return ""
    return os.path.normpath(os.path.join(log_directory, log_path))


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name or "SIGTERM"])
    except KeyError:
        return int(signal.SIGTERM)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
