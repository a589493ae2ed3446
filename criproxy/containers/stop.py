"""StopContainer: the stop signal, then SIGKILL after the timeout. It waits outside the
pod's loop for the exit that the loop records. Idempotent, also for an unknown id."""

from __future__ import annotations

import functools
import signal
from typing import TYPE_CHECKING

import anyio

from criproxy.containers import exits, signals
from criproxy.containers.deps import KILL_WAIT
from criproxy.errors import CriproxyError, DeadlineExceeded, NotFound

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container


async def stop(deps: ContainerDeps, container_id: str, timeout: float) -> None:
    container = deps.store.resolve(container_id)
    if container is None:
        return  # as critest's Idempotence spec requires (and RemoveContainer does)
    await stop_container(deps, container, timeout)
    stopped = deps.store.index.get(container.id)
    if deps.pods.nri.plugins and stopped is not None and stopped.state == "exited":
        await exits.notify_stopped(deps, stopped)  # plugins have it before the answer


async def stop_pod_containers(deps: ContainerDeps, sandbox_id: str) -> None:
    """Before a pod stops: its containers are killed (as containerd's StopPodSandbox)."""
    async with anyio.create_task_group() as tg:
        for container in deps.store.pod_containers(sandbox_id):
            tg.start_soon(stop_container, deps, container, 0)


async def stop_container(deps: ContainerDeps, container: Container, timeout: float) -> None:
    if container.state != "running":
        return
    exited = deps.exits.get(container.id)
    if exited is None:
        return
    if timeout > 0:
        await _kill(deps, container, signals.number(container.stop_signal), exited)
        with anyio.move_on_after(timeout):
            await exited.wait()
        if exited.is_set():
            return
    await _kill(deps, container, signal.SIGKILL, exited)
    with anyio.move_on_after(KILL_WAIT):
        await exited.wait()
    if not exited.is_set():
        # The exit event was lost (or containerd is slow): ask containerd directly.
        await deps.pods.loops.call(
            container.sandbox_id, functools.partial(exits.reconcile, deps, container.id)
        )
        if not exited.is_set():
            raise DeadlineExceeded(f"container {container.id} did not exit after SIGKILL")


async def _kill(
    deps: ContainerDeps, container: Container, signum: int, exited: anyio.Event
) -> None:
    """Signal the task; a task that is exiting right now (its shim gone, the exit not yet
    recorded by the pod loop) is not an error."""
    try:
        await deps.containerd.tasks.kill(
            container.id, signum, all_processes=signum == signal.SIGKILL
        )
    except NotFound:
        pass
    except CriproxyError:
        with anyio.move_on_after(KILL_WAIT):
            await exited.wait()
        if not exited.is_set():
            raise
