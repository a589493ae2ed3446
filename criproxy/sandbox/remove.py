"""RemovePodSandbox: the pod's containers go first, then the pod is stopped (if it was
not) and its pause task, record, snapshot, files and netns pin are removed. The log
directory stays: the kubelet owns it. Idempotent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.network.netns import unpin_netns
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError
from criproxy.sandbox import files, idmap
from criproxy.sandbox.deps import STATE_MOUNTS, STOP_TIMEOUT
from criproxy.sandbox.stop import stop_in_loop

if TYPE_CHECKING:
    from criproxy.sandbox.deps import PodDeps

log = structlog.get_logger("criproxy.sandbox")


async def remove_pod(deps: PodDeps, sandbox_id: str) -> None:
    """Also for an unknown id."""
    sandbox = deps.store.resolve(sandbox_id)
    if sandbox is None:
        return
    for hook in (*deps.before_stop, *deps.before_remove):
        await hook(sandbox.id)
    loop = deps.loops.loop(sandbox.id)
    try:
        await loop.call(lambda: stop_in_loop(deps, sandbox.id))
        await loop.call(lambda: _remove(deps, sandbox.id))
    except anyio.ClosedResourceError:
        pass  # a concurrent RemovePodSandbox finished it
    finally:
        if sandbox.id not in deps.store.index:
            deps.loops.close(sandbox.id, loop)


async def _remove(deps: PodDeps, sandbox_id: str) -> None:
    sandbox = deps.store.index.get(sandbox_id)
    if sandbox is None:
        return
    containerd = deps.containerd
    if sandbox_id not in deps.tasks_deleted:
        await containerd.tasks.kill_and_delete(sandbox_id, STOP_TIMEOUT)
    await containerd.containers.delete(sandbox_id)
    deps.tasks_deleted.discard(sandbox_id)
    await containerd.snapshots.remove(deps.config.containerd.snapshotter, sandbox_id)
    await anyio.to_thread.run_sync(remove_files, deps, sandbox_id)
    try:
        if deps.nri.plugins:
            await deps.nri.remove_pod_sandbox(nri_hooks.pod(sandbox))
    except PluginError as err:
        nri_hooks.logged("RemovePodSandbox", err, sandbox=sandbox_id)
    deps.store.remove(sandbox_id)
    deps.loops.close(sandbox_id)  # ends the loop after this job
    log.info("pod sandbox removed", sandbox=sandbox_id)


def remove_files(deps: PodDeps, sandbox_id: str) -> None:
    """A pod's host-side files, in one worker-thread hop. Blocking."""
    paths = deps.paths
    idmap.release(paths.idmap_root / sandbox_id)  # first: nothing may reach into a layer
    files.remove_dir(paths.state_dir / sandbox_id, STATE_MOUNTS)
    files.remove_dir(paths.files_root / sandbox_id)
    unpin_netns(paths.netns_dir / sandbox_id)
