"""Recovery: the one place that rebuilds criproxy's memory from containerd and repairs
what a killed criproxy (or a lost event) left behind.

`recover` runs at start and after every reconnect of the event subscription (events
that arrive meanwhile are applied after it, idempotently):

- at start: the image index, then every pod and container from their records and tasks
  (a half-made pod is NOTREADY, a task started by a killed StartContainer is adopted, an
  exit that happened while criproxy was down is recorded, running containers' output is
  re-attached), then the sweep of what has no record (netns pins after CNI DEL, pod and
  container dirs, FIFOs, volumes, idmapped layers); then the gate opens and List/Status
  answer from memory;
- each time: leases criproxy made whose process is gone are deleted;
- after a reconnect: the image index again, and each pod and running container is
  reconciled with its task in its pod's loop (memory is current; only tasks may have
  drifted).

`run` repeats that reconcile every RECONCILE_INTERVAL from one task listing, so an exit
whose event was lost (between a recovery and the live subscription) is seen.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import structlog

from criproxy import host
from criproxy import records as records_json
from criproxy.containerd.leases import owner_alive
from criproxy.containers import exits as container_exits
from criproxy.containers.checkpoint_pod import sweep_partial
from criproxy.containers.create import name_key
from criproxy.containers.deps import KILL_WAIT, UNKNOWN_EXIT_CODE, remove_tree
from criproxy.containers.io import ContainerIO
from criproxy.containers.model import EXTENSION as CONTAINER_EXTENSION
from criproxy.containers.model import KIND as CONTAINER_KIND
from criproxy.containers.model import REASON_OOM_KILLED, Container
from criproxy.errors import AlreadyExists, CriproxyError
from criproxy.images import labels
from criproxy.network.cni import CniRequest
from criproxy.network.netns import remove_netns
from criproxy.sandbox import exits as pod_exits
from criproxy.sandbox import files, idmap
from criproxy.sandbox.deps import STATE_MOUNTS, cni_request
from criproxy.sandbox.model import EXTENSION as SANDBOX_EXTENSION
from criproxy.sandbox.model import KIND_LABEL, Sandbox
from criproxy.sandbox.run import read_intent

if TYPE_CHECKING:
    from collections.abc import Mapping

    from criproxy.containerd import Containerd, ContainerRecord, TaskState
    from criproxy.containers.deps import ContainerDeps
    from criproxy.images.service import ImageService
    from criproxy.images.store import ImageContent
    from criproxy.sandbox.deps import PodDeps

log = structlog.get_logger("criproxy.recovery")

R = TypeVar("R")

RECONCILE_INTERVAL = 60.0
LEASE_PREFIX = "criproxy-"
_ALIVE = ("running", "paused", "pausing")


class Recovery:
    def __init__(
        self, containerd: Containerd, images: ImageService, pods: PodDeps, containers: ContainerDeps
    ) -> None:
        self._containerd = containerd
        self._images = images
        self._pods = pods
        self._containers = containers
        self._gate = pods.store.gate

    async def recover(self) -> None:
        await self._pods.loops.task_group()  # the owners of pod loops and IO pumps run
        await self._containers.started()
        await self._rebuild_images()
        await self._sweep_leases()
        if self._gate.is_open:
            self._reconcile_all(None)
            return
        tasks = {t.container_id: t for t in await self._containerd.tasks.list()}
        pod_records = await self._rebuild_pods(tasks)
        await self._rebuild_containers(tasks)
        await self._sweep_pod_orphans(pod_records)
        await self._sweep_container_orphans()
        await self._thaw(tasks)
        # No checkpoint outlives the process that made it: its CRIU images are waste, and
        # a pod checkpoint's hidden directory in the caller's output path goes too.
        checkpoints = self._containers.paths.checkpoint_root
        for partial in await anyio.to_thread.run_sync(sweep_partial, checkpoints):
            log.info("removed a pod checkpoint cut short", path=partial)
        await anyio.to_thread.run_sync(remove_tree, checkpoints)
        self._gate.open()
        log.info(
            "recovered",
            sandboxes=len(self._pods.store.index),
            containers=len(self._containers.store.index),
        )

    async def run(self) -> None:
        """The periodic reconcile; runs until cancelled (server shutdown)."""
        while True:
            await anyio.sleep(RECONCILE_INTERVAL)
            if not self._gate.is_open:
                continue
            try:
                tasks = {t.container_id: t for t in await self._containerd.tasks.list()}
            except CriproxyError as err:
                log.debug("periodic reconcile skipped", error=err.message)
                continue
            self._reconcile_all(tasks)

    def _reconcile_all(self, tasks: Mapping[str, TaskState] | None) -> None:
        """Queue a reconcile in the loop of each pod (and running container) that may have
        drifted: every one without a task listing, else those the listing contradicts."""
        loops = self._pods.loops
        queued = 0
        for sandbox in self._pods.store.index:
            task = tasks.get(sandbox.id) if tasks is not None else None
            if tasks is None or (
                sandbox.state == "ready" and (task is None or task.status != "running")
            ):
                loops.post(
                    sandbox.id, functools.partial(pod_exits.reconcile, self._pods, sandbox.id)
                )
                queued += 1
        for container in self._containers.store.index:
            if container.state != "running":
                continue
            task = tasks.get(container.id) if tasks is not None else None
            if tasks is None or task is None or task.status == "stopped":
                loops.post(
                    container.sandbox_id,
                    functools.partial(container_exits.reconcile, self._containers, container.id),
                )
                queued += 1
        if tasks is None:
            log.info("pods and containers queued for reconciliation", queued=queued)

    # --- images -------------------------------------------------------------------------

    async def _rebuild_images(self) -> None:
        """The image index from containerd's image records."""
        images = self._images
        records = await self._containerd.images.list()
        contents: dict[str, ImageContent | None] = {}
        entries = []
        for record in records:
            key = record.target.digest
            if key not in contents:
                contents[key] = await images.content_or_none(record)
            content = contents[key]
            if content is not None:
                pinned = record.labels.get(labels.CRI_PINNED) == labels.CRI_PINNED_VALUE
                entries.append((record.name, content, pinned))
        images.store.replace_all(entries)
        log.info("image index rebuilt", images=len(images.store.list()), records=len(records))

    # --- pods ---------------------------------------------------------------------------

    async def _rebuild_pods(self, tasks: Mapping[str, TaskState]) -> set[str]:
        """Every sandbox from its pause container's record; the ids of all records (the
        unreadable ones too: what they own is never an orphan)."""
        deps = self._pods
        records, sandboxes = await self._read("sandbox", SANDBOX_EXTENSION, Sandbox)
        for sandbox in sandboxes:
            deps.store.put(sandbox)
            try:
                await pod_exits.repaired(deps, sandbox, tasks.get(sandbox.id))
            except CriproxyError as err:
                log.warning("sandbox state not saved", sandbox=sandbox.id, error=err.message)
            try:
                deps.store.names.reserve(sandbox.config.metadata.reservation, sandbox.id)
            except AlreadyExists as err:
                log.warning("sandbox name taken twice", sandbox=sandbox.id, error=err.message)
            deps.loops.loop(sandbox.id)
        return {record.id for record in records}

    async def _read(
        self, kind: str, extension: str, cls: type[R]
    ) -> tuple[list[ContainerRecord], list[R]]:
        """criproxy's containerd records of one kind, and what each says; one unreadable
        record is logged and must not stop the recovery of the others."""
        records = await self._containerd.containers.list(f'labels."{KIND_LABEL}"=={kind}')
        read = []
        for record in records:
            raw = record.extensions.get(extension)
            if raw is None:
                continue
            try:
                read.append(records_json.from_json(cls, raw))
            except Exception as err:
                log.error(f"{kind} record unreadable", id=record.id, error=repr(err))
        return records, read

    async def _sweep_pod_orphans(self, known: set[str]) -> None:
        """What a criproxy killed early in RunPodSandbox left with no record: the netns pin
        (after CNI DEL, which releases the IP), and the pod's directories."""
        deps = self._pods
        paths = deps.paths
        keep = known | {i for i, s in deps.store.setups.items() if not s.done.is_set()}
        for name in await anyio.to_thread.run_sync(_leftovers, paths.netns_dir, keep):
            path = paths.netns_dir / name
            log.warning("cleaning up the netns of a pod that was never recorded", sandbox=name)
            intent = await anyio.to_thread.run_sync(read_intent, paths.state_dir / name)
            request = (
                cni_request(intent)
                if intent is not None
                else CniRequest(container_id=name, netns=str(path))
            )
            try:
                await deps.cni.teardown(request, None)
            except CriproxyError as err:
                log.warning("CNI DEL of an orphan failed", sandbox=name, error=err.message)
            await remove_netns(path)
        for directory in (paths.state_dir, paths.files_root):
            for name in await anyio.to_thread.run_sync(_leftovers, directory, keep):
                await anyio.to_thread.run_sync(files.remove_dir, directory / name, STATE_MOUNTS)

    # --- containers ---------------------------------------------------------------------

    async def _rebuild_containers(self, tasks: Mapping[str, TaskState]) -> None:
        """Every container from its record and its task; running ones' output re-attached."""
        deps = self._containers
        records, containers = await self._read(CONTAINER_KIND, CONTAINER_EXTENSION, Container)
        specs = {record.id: record.spec for record in records}
        for recorded in containers:
            container = await self._container_state(recorded, tasks.get(recorded.id))
            deps.store.put(container, specs.get(container.id))
            sandbox = self._pods.store.index.get(container.sandbox_id)
            if sandbox is not None:
                key = name_key(container.config, sandbox.config.metadata)
                try:
                    deps.store.names.reserve(key, container.id)
                except AlreadyExists as err:
                    log.warning(
                        "container name taken twice", container=container.id, error=err.message
                    )

    async def _container_state(self, container: Container, task: TaskState | None) -> Container:
        """The container as its task says it is; its output re-attached when it runs.

        A CREATED record with a task is a criproxy killed inside StartContainer: a running
        task is adopted (RUNNING), any other is deleted (still CREATED, startable again).
        """
        deps = self._containers
        alive = task is not None and task.status in _ALIVE
        if container.state == "created" and task is not None:
            if not alive:
                await deps.delete_task_quietly(container.id)
                return container
            started = await anyio.to_thread.run_sync(host.process_started_ns, task.pid)
            container = container.with_changes(
                state="running", pid=task.pid, started_at_ns=started or time.time_ns()
            )
            await deps.persist_quietly(container)
        if container.state != "running":
            return container
        if alive:
            await self._end_orphan_execs(container)
            await self._reattach(container)
            return container
        # It exited while criproxy was down: record what containerd knows.
        if task is not None:
            await deps.delete_task_quietly(container.id, kill=False)
        exited = container.with_changes(
            state="exited",
            pid=0,
            exit_code=task.exit_status if task else UNKNOWN_EXIT_CODE,
            finished_at_ns=(task.exited_at_ns if task else 0) or time.time_ns(),
            reason=(REASON_OOM_KILLED if container.oom_killed else "") if task else "Unknown",
        )
        await deps.persist_quietly(exited)
        return exited

    async def _reattach(self, container: Container) -> None:
        """Resume reading a running container's output; one container's broken FIFO or log
        file is logged and must not stop the recovery of the others."""
        deps = self._containers
        deps.exits.setdefault(container.id, anyio.Event())
        if container.id in deps.ios:
            return
        try:
            io = await ContainerIO.attach(
                Path(container.io_dir),
                container.id,
                log_path=container.log_path,
                stdin=container.config.stdin,
                tty=container.config.tty,
                max_line_size=deps.config.max_container_log_line_size,
            )
        except CriproxyError as err:
            log.error("container output not re-attached", container=container.id, error=err.message)
            return
        deps.background.start_soon(io.run)
        deps.ios[container.id] = io

    async def _end_orphan_execs(self, container: Container) -> None:
        """Exec processes a killed criproxy started (ExecSync or a streaming session, none
        of which outlives it): killed and deleted, their FIFOs removed. Their FIFOs in the
        container's IO dir name them."""
        tasks = self._containerd.tasks
        io_dir = Path(container.io_dir)
        names = await anyio.to_thread.run_sync(_leftovers, io_dir, set())
        exec_ids = {n.rsplit("-", 1)[0] for n in names if not n.startswith(container.id)}
        for exec_id in sorted(exec_ids):
            log.info(
                "ending an exec of a criproxy that is gone", container=container.id, exec_id=exec_id
            )
            with contextlib.suppress(CriproxyError):
                await tasks.kill(container.id, signal.SIGKILL, exec_id=exec_id)
                await tasks.wait(container.id, exec_id, KILL_WAIT)
            with contextlib.suppress(CriproxyError):
                await tasks.delete_process(container.id, exec_id)
            for name in names:
                if name.startswith(exec_id):
                    with contextlib.suppress(OSError):
                        (io_dir / name).unlink()

    async def _thaw(self, tasks: dict[str, TaskState]) -> None:
        """Containers left frozen by a pod checkpoint cut short (criproxy pauses a task
        only for that): resumed, as a checkpoint never leaves a pod frozen."""
        known = self._containers.store.index.ids()
        for task in tasks.values():
            if task.status in ("paused", "pausing") and task.container_id in known:
                try:
                    await self._containerd.tasks.resume(task.container_id)
                except CriproxyError as err:
                    log.warning(
                        "container not resumed", container=task.container_id, error=err.message
                    )
                else:
                    log.info(
                        "resumed a container a cut-short checkpoint left frozen",
                        container=task.container_id,
                    )

    async def _sweep_container_orphans(self) -> None:
        """What containers that no longer exist left (a kill -9 before their record was made
        or during their removal): idmapped layers and mounted image volumes first (their
        views, no longer referenced, are containerd's GC's), then FIFO and volume dirs."""
        deps = self._containers
        known = deps.store.index.ids() | self._pods.store.index.ids()
        for mounts_root in (deps.paths.idmap_root, deps.paths.image_volume_root):
            for name in await anyio.to_thread.run_sync(_leftovers, mounts_root, known):
                await anyio.to_thread.run_sync(idmap.release, mounts_root / name)
        for directory in (deps.paths.io_root, deps.paths.volumes_root, deps.paths.restore_root):
            for name in await anyio.to_thread.run_sync(_leftovers, directory, known):
                log.info(
                    "removing what a container without a record left", path=str(directory / name)
                )
                await anyio.to_thread.run_sync(remove_tree, directory / name)

    # --- leases -------------------------------------------------------------------------

    async def _sweep_leases(self) -> None:
        """Leases criproxy made (pod and container set-ups, pulls, imports) whose process no
        longer runs: deleted, so containerd's GC frees what they held at once."""
        leases = self._containerd.leases
        try:
            mine = [lease for lease in await leases.list() if lease.id.startswith(LEASE_PREFIX)]
        except CriproxyError as err:
            log.warning("leases not listed", error=err.message)
            return
        for lease in mine:
            if await anyio.to_thread.run_sync(owner_alive, lease.owner):
                continue
            log.info("deleting the lease of a process that is gone", lease=lease.id)
            try:
                await leases.delete(lease.id, sync=True)
            except CriproxyError as err:
                log.warning("lease not deleted", lease=lease.id, error=err.message)


def _leftovers(directory: Path, known: set[str]) -> list[str]:
    """The entries of `directory` that belong to no known pod or container. Blocking."""
    try:
        return [name for name in os.listdir(directory) if name not in known]
    except FileNotFoundError:
        return []
