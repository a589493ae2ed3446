"""A pause process that dies: its exit event, and the reconcile that finds a lost one.

Both run in the pod's loop. The pod is NOTREADY until the kubelet stops it.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import structlog

from criproxy.containerd import TaskEvent

if TYPE_CHECKING:
    from criproxy.containerd import Event, TaskState
    from criproxy.sandbox.deps import PodDeps
    from criproxy.sandbox.model import Sandbox

log = structlog.get_logger("criproxy.sandbox")


def on_event(deps: PodDeps, event: Event) -> None:
    """Route a pause task's exit to its pod's loop."""
    payload = event.payload
    if not isinstance(payload, TaskEvent) or payload.action != "exit":
        return
    if payload.container_id not in deps.store.index or not payload.main_process:
        return
    deps.loops.post(
        payload.container_id,
        functools.partial(
            exited, deps, payload.container_id, payload.exit_status, payload.exited_at_ns
        ),
    )


async def exited(deps: PodDeps, sandbox_id: str, exit_code: int, exited_at_ns: int) -> None:
    """The pause process died: the pod is NOTREADY until the kubelet stops it."""
    sandbox = deps.store.index.get(sandbox_id)
    if sandbox is None or sandbox.state == "notready":
        return
    updated = sandbox.with_changes(
        state="notready", exit_code=exit_code, exited_at_ns=exited_at_ns or time.time_ns()
    )
    deps.store.put(updated)  # first: the state stands even if it cannot be saved
    await deps.persist(updated)
    log.warning("pod sandbox exited", sandbox=sandbox_id, exit_code=exit_code)


async def reconcile(deps: PodDeps, sandbox_id: str) -> None:
    """In the pod's loop: compare a ready pod with its pause task and repair drift."""
    sandbox = deps.store.index.get(sandbox_id)
    if sandbox is None or sandbox.state != "ready":
        return
    task = await deps.containerd.tasks.get(sandbox_id)
    await repaired(deps, sandbox, task)


async def repaired(deps: PodDeps, sandbox: Sandbox, task: TaskState | None) -> Sandbox:
    """The sandbox with its pause task's real state, saved (and stored) when that differs.

    A sandbox still CREATING is a criproxy killed inside RunPodSandbox; a READY one whose
    pause task is gone or stopped had an exit criproxy did not see.
    """
    half_made = sandbox.state == "creating"
    dead = sandbox.state == "ready" and (task is None or task.status != "running")
    if not (half_made or dead):
        return sandbox
    repaired = sandbox.with_changes(
        state="notready",
        exit_code=task.exit_status if task else sandbox.exit_code,
        exited_at_ns=(task.exited_at_ns if task else 0) or time.time_ns(),
    )
    log.warning("pod sandbox found not running", sandbox=sandbox.id)
    deps.store.put(repaired)
    await deps.persist(repaired)
    return repaired
