"""RemoveContainer: SIGKILL if running, then the task, then the record; the snapshot, the
FIFOs, volumes and idmapped layers after the answer. The log file stays: the kubelet
removes it. Idempotent."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containers import exits, image_volumes
from criproxy.containers.deps import KILL_WAIT, remove_tree
from criproxy.containers.stop import stop_container
from criproxy.errors import CriproxyError, FailedPrecondition, NotFound
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError
from criproxy.sandbox import idmap

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container

log = structlog.get_logger("criproxy.containers")


async def remove(deps: ContainerDeps, container_id: str) -> None:
    container = deps.store.resolve(container_id)
    if container is None:
        return
    await stop_container(deps, container, 0)
    try:
        await deps.pods.loops.call(container.sandbox_id, lambda: _remove(deps, container.id))
    except NotFound:
        await _remove(deps, container.id)  # the pod is gone already


async def remove_pod_containers(deps: ContainerDeps, sandbox_id: str) -> None:
    """Before a pod goes: its containers go."""
    for container in deps.store.pod_containers(sandbox_id):
        await remove(deps, container.id)


async def _remove(deps: ContainerDeps, container_id: str) -> None:
    container = deps.store.index.get(container_id)
    if container is None:
        return
    if container.state == "running":
        raise FailedPrecondition(f"container {container_id} is still running")
    if container_id not in deps.tasks_deleted:  # deleted at its exit: nothing to look up
        await deps.containerd.tasks.kill_and_delete(container_id, KILL_WAIT)  # holds the rootfs
    # The record first, and alone on the caller's path: once it is gone the container is
    # gone for good (a criproxy killed now never lists it again). The snapshot and the
    # files follow after the answer; should criproxy die first, a snapshot no record
    # references is containerd's GC's and the files are the recovery's orphan sweep's.
    await deps.containerd.containers.delete(container_id)
    if deps.pods.nri.plugins:
        await exits.notify_stopped(deps, container)  # if its exit was never told
        await _notify_removed(deps, container)
    deps.forget(container_id)
    deps.store.remove(container_id)
    deps.background.start_soon(_remove_leftovers, deps, container)
    log.info("container removed", container=container_id)
    deps.publish("deleted", container)


async def _notify_removed(deps: ContainerDeps, container: Container) -> None:
    sandbox = deps.pods.store.index.get(container.sandbox_id)
    if sandbox is None or not deps.pods.nri.plugins:
        return
    spec = deps.store.specs.get(container.id)
    try:
        await deps.pods.nri.remove_container(
            nri_hooks.pod(sandbox), nri_hooks.container(container, spec)
        )
    except PluginError as err:
        nri_hooks.logged("RemoveContainer", err, container=container.id)


async def _remove_leftovers(deps: ContainerDeps, container: Container) -> None:
    """The snapshot and the files of a removed container, off the RemoveContainer call."""
    paths = deps.paths

    def remove_files() -> None:
        idmap.release(paths.idmap_root / container.id)  # before any rmtree: nothing may
        remove_tree(Path(container.io_dir))  # reach into a layer
        remove_tree(paths.volumes_root / container.id)
        remove_tree(paths.restore_root / container.id)

    async def remove_snapshot() -> None:
        await deps.containerd.snapshots.remove(deps.config.containerd.snapshotter, container.id)

    steps = (
        functools.partial(image_volumes.release, deps, container),  # unmounted before all
        remove_snapshot,
        functools.partial(anyio.to_thread.run_sync, remove_files),
    )
    for step in steps:
        try:
            await step()
        except (CriproxyError, OSError) as err:
            message = err.message if isinstance(err, CriproxyError) else str(err)
            log.warning(
                "removed container's leftovers not removed",
                container=container.id,
                error=message,
            )
