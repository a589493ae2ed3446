"""A container's process that exits or is OOM-killed: containerd's events, and the
reconcile that finds an exit whose event was lost. All of it runs in the pod's loop."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containerd import TaskEvent
from criproxy.containers.deps import IO_DRAIN, UNKNOWN_EXIT_CODE
from criproxy.containers.model import REASON_OOM_KILLED
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError

if TYPE_CHECKING:
    from criproxy.containerd import Event
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container

log = structlog.get_logger("criproxy.containers")


def on_event(deps: ContainerDeps, event: Event) -> None:
    """Route a container's task exit or OOM to its pod's loop."""
    payload = event.payload
    if not isinstance(payload, TaskEvent):
        return
    container = deps.store.index.get(payload.container_id)
    if container is None:
        return
    loops = deps.pods.loops
    if payload.action == "oom":
        loops.post(container.sandbox_id, functools.partial(oom, deps, container.id))
    elif payload.action == "exit" and payload.main_process:
        loops.post(
            container.sandbox_id,
            functools.partial(
                exited, deps, container.id, payload.exit_status, payload.exited_at_ns
            ),
        )


async def oom(deps: ContainerDeps, container_id: str) -> None:
    """containerd may report the OOM kill after the exit it caused: an exited container's
    reason becomes OOMKilled then too (as containerd's CRI sets it on either order)."""
    container = deps.store.index.get(container_id)
    if container is None or container.oom_killed:
        return
    updated = container.with_changes(oom_killed=True)
    if container.state == "exited" and container.reason != "StartError":
        updated = updated.with_changes(reason=REASON_OOM_KILLED)
    deps.store.put(updated)
    await deps.persist(updated)


async def exited(deps: ContainerDeps, container_id: str, exit_code: int, exited_at_ns: int) -> None:
    """The container's process exited: reap the task, drain its output, record it."""
    container = deps.store.index.get(container_id)
    if container is None or container.state != "running":
        return
    await deps.delete_task_quietly(container_id, kill=False)
    io = deps.ios.pop(container_id, None)
    if io is not None:
        await io.wait_drained(IO_DRAIN)
        io.close()
    stopped = container.with_changes(
        state="exited",
        pid=0,
        exit_code=exit_code,
        finished_at_ns=exited_at_ns or time.time_ns(),
        reason=REASON_OOM_KILLED if container.oom_killed else "",
    )
    deps.store.put(stopped)
    try:
        await deps.persist(stopped)
    finally:
        exit_event = deps.exits.pop(container_id, None)
        if exit_event is not None:
            exit_event.set()
    log.info("container exited", container=container_id, exit_code=exit_code)
    deps.publish("stopped", stopped)
    if deps.pods.nri.plugins:  # off the pod's loop: plugins get up to their deadline
        deps.background.start_soon(notify_stopped, deps, stopped)


async def notify_stopped(deps: ContainerDeps, container: Container) -> None:
    """NRI's StopContainer, once per container: at its exit, or at its removal if it
    never ran. A second caller (StopContainer's answer) waits until plugins have it."""
    told = deps.nri_stopped.get(container.id)
    if told is not None:
        await told.wait()
        return
    told = deps.nri_stopped[container.id] = anyio.Event()
    try:
        nri = deps.pods.nri
        sandbox = deps.pods.store.index.get(container.sandbox_id)
        if not nri.plugins or sandbox is None:
            return
        spec = deps.store.specs.get(container.id)
        try:
            await nri.stop_container(nri_hooks.pod(sandbox), nri_hooks.container(container, spec))
        except PluginError as err:
            nri_hooks.logged("StopContainer", err, container=container.id)
    finally:
        told.set()


async def reconcile(deps: ContainerDeps, container_id: str) -> None:
    """In the pod's loop: a running container whose task is gone or stopped has exited."""
    container = deps.store.index.get(container_id)
    if container is None or container.state != "running":
        return
    task = await deps.containerd.tasks.get(container_id)
    if task is not None and task.status in ("running", "paused", "pausing", "created"):
        return
    await exited(
        deps,
        container_id,
        task.exit_status if task else UNKNOWN_EXIT_CODE,
        (task.exited_at_ns if task else 0) or time.time_ns(),
    )
