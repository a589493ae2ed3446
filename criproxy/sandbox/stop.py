"""StopPodSandbox: the pod's containers stop first, then the pause task is killed beside
CNI DEL; the pod stays listed (NOTREADY) until it is removed. Idempotent.

The pod is NOTREADY (recorded) as soon as its pause task is gone, while its network may
still be going, as containerd's CRI reports it; the netns and CNI result are cleared once
the network is torn down, so a criproxy killed in between leaves a NOTREADY pod whose next
stop or removal runs CNI DEL again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from criproxy.network.netns import remove_netns
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError
from criproxy.sandbox.deps import STOP_TIMEOUT, cni_request
from criproxy.steps import both

if TYPE_CHECKING:
    from criproxy.containerd import TaskExitInfo
    from criproxy.sandbox.deps import PodDeps
    from criproxy.sandbox.model import Sandbox

log = structlog.get_logger("criproxy.sandbox")


async def stop_pod(deps: PodDeps, sandbox_id: str) -> None:
    """Also for an unknown id (the kubelet retries stops of pods that are gone)."""
    sandbox = deps.store.resolve(sandbox_id)
    if sandbox is None:
        return
    for hook in deps.before_stop:
        await hook(sandbox.id)
    await deps.loops.loop(sandbox.id).call(lambda: stop_in_loop(deps, sandbox.id))


async def stop_in_loop(deps: PodDeps, sandbox_id: str) -> None:
    sandbox = deps.store.index.get(sandbox_id)
    if sandbox is None:
        return
    torn_down = not sandbox.netns and sandbox.cni_result is None
    if sandbox.state == "notready" and torn_down and sandbox.pid == 0:
        return  # already stopped and torn down
    try:  # its containers are stopped by now; the sandbox is still there to read
        if deps.nri.plugins:
            await deps.nri.stop_pod_sandbox(nri_hooks.pod(sandbox))
    except PluginError as err:
        nri_hooks.logged("StopPodSandbox", err, sandbox=sandbox_id)

    tears_down = not sandbox.config.host_network and not torn_down
    network_done = False

    def stopped(base: Sandbox, exited: TaskExitInfo | None) -> Sandbox:
        changes: dict[str, object] = {"state": "notready", "pid": 0}
        if exited is not None and not base.exited_at_ns:
            changes["exit_code"] = exited.exit_status
            changes["exited_at_ns"] = exited.exited_at_ns or time.time_ns()
        return base.with_changes(**changes)

    async def kill() -> TaskExitInfo | None:
        exited = await deps.containerd.tasks.kill_and_delete(
            sandbox.id, STOP_TIMEOUT, running=sandbox.state == "ready"
        )
        deps.tasks_deleted.add(sandbox.id)
        if tears_down and not network_done and sandbox.state == "ready":
            await deps.persist(stopped(sandbox, exited))
        return exited

    async def network() -> None:
        nonlocal network_done
        if tears_down:
            await deps.cni.teardown(cni_request(sandbox), sandbox.cni_result)
        network_done = True

    exited, _ = await both(kill(), network())
    if sandbox.netns:
        await remove_netns(Path(sandbox.netns))
    latest = deps.store.index.get(sandbox_id) or sandbox
    await deps.persist(stopped(latest, exited).with_changes(netns="", cni_result=None))
    log.info("pod sandbox stopped", sandbox=sandbox_id)
