"""StartContainer: the container's FIFOs and log writer, then its task (on the snapshot,
idmapped through the pod's user namespace where it has one), started. A start that fails
leaves the container EXITED with StartError and the runtime's message, as containerd."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containers import image_volumes
from criproxy.containers.checkpoint import CHECKPOINT_DIR, CONTAINER_LOG
from criproxy.containers.deps import remove_tree
from criproxy.containers.io import ContainerIO
from criproxy.errors import CriproxyError, FailedPrecondition, Internal, NotFound
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError
from criproxy.sandbox import idmap
from criproxy.sandbox.handlers import resolve_handler, runc_options

if TYPE_CHECKING:
    from google.protobuf import any_pb2

    from criproxy.config import RuntimeHandler
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container

log = structlog.get_logger("criproxy.containers")

START_ERROR_EXIT_CODE = 128


async def start(deps: ContainerDeps, container_id: str) -> None:
    container = deps.store.get(container_id)
    nri = deps.pods.nri
    if nri.plugins:  # their veto comes before anything starts
        sandbox = deps.pods.store.ready(container.sandbox_id)
        spec = deps.store.specs.get(container.id)
        try:
            await nri.start_container(nri_hooks.pod(sandbox), nri_hooks.container(container, spec))
        except PluginError as err:
            raise nri_hooks.vetoed(err) from None
    await deps.pods.loops.call(container.sandbox_id, lambda: _start(deps, container.id))
    started = deps.store.index.get(container.id)
    if started is not None:
        deps.publish("started", started)
        if nri.plugins:
            sandbox = deps.pods.store.get(container.sandbox_id)
            spec = deps.store.specs.get(container.id)
            try:
                await nri.post_start_container(
                    nri_hooks.pod(sandbox), nri_hooks.container(started, spec)
                )
            except PluginError as err:
                nri_hooks.logged("PostStartContainer", err, container=container.id)


async def _start(deps: ContainerDeps, container_id: str) -> None:
    container = deps.store.index.get(container_id)
    if container is None:
        raise NotFound(f"container {container_id!r} not found")
    if container.state != "created":
        raise FailedPrecondition(
            f"container {container_id} is {container.state.upper()}, not CREATED"
        )
    sandbox = deps.pods.store.ready(container.sandbox_id)
    handler = resolve_handler(deps.config, sandbox.runtime_handler)
    tasks = deps.containerd.tasks
    cfg = container.config
    options = None
    if container.restore_dir:  # made from a checkpoint: CRIU restores its processes
        options = await anyio.to_thread.run_sync(_restore_options, deps, handler, container)
    if any(m.image for m in cfg.mounts):
        await image_volumes.ensure_mounted(deps, container)
    io = await ContainerIO.create(
        Path(container.io_dir),
        container.id,
        log_path=container.log_path,
        stdin=cfg.stdin,
        tty=cfg.tty,
        stdin_once=cfg.stdin_once,
        max_line_size=deps.config.max_container_log_line_size,
    )
    try:
        mounts = deps.prepared_mounts.pop(container.id, None)
        if mounts is None:  # created by an earlier criproxy process
            mounts = await deps.containerd.snapshots.mounts(
                deps.config.containerd.snapshotter, container.id
            )
        userns = sandbox.config.security.userns
        if sandbox.userns and userns is not None:
            mounts = await anyio.to_thread.run_sync(
                idmap.idmapped_rootfs,
                mounts,
                sandbox.userns,
                deps.paths.idmap_root / container.id,
                userns,
            )
        deps.exits[container.id] = anyio.Event()
        deps.background.start_soon(io.run)
        deps.ios[container.id] = io
        await tasks.create(
            container.id,
            mounts,
            stdin=io.fifos.stdin,
            stdout=io.fifos.stdout,
            stderr=io.fifos.stderr,
            terminal=cfg.tty,
            runtime_path=handler.runtime_path,
            options=options,
        )
        started_at = time.time_ns()  # before: a quick exit must not precede it
        pid = await tasks.start(container.id)
    except BaseException as err:
        failure = err if isinstance(err, CriproxyError) else Internal(f"start failed: {err!r}")
        if deps.ios.get(container.id) is not io:
            io.close()  # failed before its pumps were handed over
        with anyio.CancelScope(shield=True):
            await _start_failed(deps, container, failure)
        if isinstance(err, Exception) and failure is not err:
            raise failure from None
        raise
    running = container.with_changes(
        state="running", pid=pid, started_at_ns=started_at, restore_dir=""
    )
    deps.store.put(running)
    deps.persist_later(container.id)
    if container.restore_dir:  # CRIU is done with it
        deps.background.start_soon(
            anyio.to_thread.run_sync, remove_tree, Path(container.restore_dir)
        )
    log.info("container started", container=container.id, pid=pid)


def _restore_options(
    deps: ContainerDeps, handler: RuntimeHandler, container: Container
) -> any_pb2.Any:
    """The runc shim's options for a restoring task (they replace the container's own for
    it), and the checkpointed log carried over where the new one is still empty. Blocking."""
    base = runc_options(handler, deps.config)
    if base is None:
        raise FailedPrecondition(f"restoring container {container.id} needs the runc shim")
    restore_dir = Path(container.restore_dir)
    work = restore_dir / "work"
    work.mkdir(mode=0o700, exist_ok=True)
    saved_log = restore_dir / CONTAINER_LOG
    if container.log_path and saved_log.is_file() and not Path(container.log_path).exists():
        Path(container.log_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved_log, container.log_path)
    options = dataclasses.replace(
        base, criu_image_path=str(restore_dir / CHECKPOINT_DIR), criu_work_path=str(work)
    )
    return options.to_any()


async def _start_failed(deps: ContainerDeps, container: Container, err: CriproxyError) -> None:
    """As containerd: the container is EXITED with StartError and the runtime's message."""
    await deps.delete_task_quietly(container.id)
    io = deps.ios.pop(container.id, None)
    if io is not None:
        io.close()
    await anyio.to_thread.run_sync(idmap.release, deps.paths.idmap_root / container.id)
    failed = container.with_changes(
        state="exited",
        exit_code=START_ERROR_EXIT_CODE,
        finished_at_ns=time.time_ns(),
        started_at_ns=0,
        reason="StartError",
        message=err.message,
    )
    deps.store.put(failed)
    exit_event = deps.exits.pop(container.id, None)
    if exit_event is not None:
        exit_event.set()
    await deps.persist_quietly(failed)
