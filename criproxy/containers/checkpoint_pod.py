"""CheckpointPod: the pod's selected running containers frozen together, each dumped by
CRIU while all stay frozen, then all resumed, so the checkpoint is one consistent cut of
the pod and the pod is never left frozen. Written into the caller's empty directory as
`pod.dump` (the pod's metadata and config), `pod.options` (which containers) and one
container archive each, `<container name>.tar`, laid out as CheckpointContainer's.

The files appear all or none: they are made in a hidden directory inside `output_path`
and moved into place at the end; a failure removes it, and a criproxy killed meanwhile
leaves a note under its root directory that the next start's sweep follows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy.containers.checkpoint import (
    DEFAULT_TIMEOUT,
    capture,
    claimed,
    running_container,
    usable_criu,
)
from criproxy.errors import CriproxyError, DeadlineExceeded, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container
    from criproxy.sandbox.model import Sandbox

log = structlog.get_logger("criproxy.containers")

POD_DUMP = "pod.dump"
POD_OPTIONS = "pod.options"
PARTIAL_PREFIX = ".criproxy-partial-"
NOTE_SUFFIX = ".partial"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


async def checkpoint_pod(
    deps: ContainerDeps,
    sandbox_id: str,
    *,
    output_path: str,
    container_ids: list[str],
    options: Mapping[str, str],
    timeout: float,
    statuses: Mapping[str, bytes],
) -> None:
    """`statuses`: each container's CRI status as JSON, made by the caller."""
    sandbox = deps.pods.store.ready(sandbox_id)
    if options:
        raise InvalidArgument(
            f"options {sorted(options)} are not supported: CheckpointPod takes no options here"
        )
    containers = _selected(deps, sandbox, container_ids)
    output = await anyio.to_thread.run_sync(_output_dir, output_path)  # lists the disk
    found = await usable_criu(deps, f"pod {sandbox.id}")
    deadline = time.monotonic() + (timeout or DEFAULT_TIMEOUT)
    started = time.monotonic()
    partial = output / f"{PARTIAL_PREFIX}{secrets.token_hex(4)}"
    note = deps.paths.checkpoint_root / f"{partial.name}{NOTE_SUFFIX}"
    await anyio.to_thread.run_sync(_begin, partial, note)
    try:
        with claimed(deps, containers):
            await _freeze_andcapture(deps, containers, partial, deadline, statuses)
        await anyio.to_thread.run_sync(_write_pod_files, partial, sandbox, containers)
        await anyio.to_thread.run_sync(_publish, partial, output)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_end, partial, note)
    log.info(
        "pod checkpointed",
        sandbox=sandbox.id,
        containers=[c.id for c in containers],
        output=str(output),
        criu=found.version,
        seconds=round(time.monotonic() - started, 3),
    )


def _selected(deps: ContainerDeps, sandbox: Sandbox, container_ids: list[str]) -> list[Container]:
    if not container_ids:
        raise InvalidArgument("container_ids is required: the pod's running containers to include")
    if len(set(container_ids)) != len(container_ids):
        raise InvalidArgument(f"container_ids {container_ids} name a container twice")
    containers = []
    for container_id in container_ids:
        container = running_container(deps, container_id)
        if container.sandbox_id != sandbox.id:
            raise InvalidArgument(
                f"container {container.id} belongs to pod {container.sandbox_id}, "
                f"not to pod {sandbox.id}"
            )
        if not _NAME.match(container.config.name):
            raise FailedPrecondition(
                f"container {container.id}'s name {container.config.name!r} cannot name its archive"
            )
        containers.append(container)
    names = [c.config.name for c in containers]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"container_ids select two containers of one name: {names}")
    return containers


def _output_dir(output_path: str) -> Path:
    if not output_path:
        raise InvalidArgument("output_path is required: an existing, empty directory")
    path = Path(output_path)
    if not path.is_absolute():
        raise InvalidArgument(f"output_path {output_path!r} must be an absolute path")
    if not path.is_dir():
        raise InvalidArgument(f"output_path {output_path!r} is not an existing directory")
    if any(path.iterdir()):
        raise InvalidArgument(f"output_path {output_path!r} is not empty")
    return path


async def _freeze_andcapture(
    deps: ContainerDeps,
    containers: list[Container],
    partial: Path,
    deadline: float,
    statuses: Mapping[str, bytes],
) -> None:
    """Every container paused before any is dumped, and all resumed before returning,
    whatever happens (a deadline included)."""
    tasks = deps.containerd.tasks
    paused: list[Container] = []
    try:
        for container in containers:
            paused.append(container)  # first: a pause cancelled on its way may still land
            await tasks.pause(container.id)
        for container in containers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"checkpoint of pod {container.sandbox_id} ran out of time before "
                    f"container {container.id}"
                )
            archive = partial / f"{container.config.name}.tar"
            await capture(deps, container, archive, left, statuses[container.id])
    finally:
        with anyio.CancelScope(shield=True):
            for container in paused:
                try:
                    await tasks.resume(container.id)
                except CriproxyError as err:
                    log.error(
                        "container not resumed after a pod checkpoint",
                        container=container.id,
                        error=err.message,
                    )


def _begin(partial: Path, note: Path) -> None:
    note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    note.write_text(str(partial))
    partial.mkdir(mode=0o700)


def _write_pod_files(partial: Path, sandbox: Sandbox, containers: list[Container]) -> None:
    pod = sandbox.config
    dump: dict[str, Any] = {
        "metadata": {
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
            "namespace": pod.metadata.namespace,
            "attempt": pod.metadata.attempt,
        },
        "hostname": pod.hostname,
        "log_directory": pod.log_directory,
        "labels": pod.labels,
        "annotations": pod.annotations,
        "sandbox_id": sandbox.id,
        "runtime_handler": sandbox.runtime_handler,
    }
    options = {
        "version": 1,
        "containers": [c.config.name for c in containers],
        "mountLabel": "",
        "processLabel": "",
    }
    for name, data in ((POD_DUMP, dump), (POD_OPTIONS, options)):
        (partial / name).write_text(json.dumps(data, indent=2))


def _publish(partial: Path, output: Path) -> None:
    """pod.options last: a directory cut short while being filled lacks it, and is no
    checkpoint RestorePod would take."""
    entries = sorted(os.listdir(partial), key=lambda e: e == POD_OPTIONS)
    for entry in entries:
        os.rename(partial / entry, output / entry)


def _end(partial: Path, note: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
    note.unlink(missing_ok=True)


def sweep_partial(checkpoint_root: Path) -> list[str]:
    """The hidden directories that pod checkpoints of a killed criproxy left, removed
    (only directories of criproxy's own name). Blocking."""
    removed: list[str] = []
    if not checkpoint_root.is_dir():
        return removed
    for note in checkpoint_root.glob(f"*{NOTE_SUFFIX}"):
        try:
            partial = Path(note.read_text().strip())
        except OSError:
            continue
        if partial.is_absolute() and partial.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(str(partial))
    return removed


def pod_archives(checkpoint_path: str) -> dict[str, str]:
    """`{container name: its archive}` of a pod checkpoint directory, as its pod.options
    lists them; each archive is checked (signature and all) when restored. Blocking."""
    path = Path(checkpoint_path)
    if not checkpoint_path or not path.is_absolute():
        raise InvalidArgument(f"checkpoint_path {checkpoint_path!r} must be an absolute path")
    if not path.is_dir():
        raise InvalidArgument(f"checkpoint_path {checkpoint_path!r} is not a directory")
    try:
        options = json.loads((path / POD_OPTIONS).read_bytes())
        names = options["containers"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidArgument(
            f"checkpoint_path {checkpoint_path!r} holds no readable {POD_OPTIONS}"
        ) from None
    if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.match(n) for n in names):
        raise InvalidArgument(f"{path / POD_OPTIONS} does not list container names")
    archives = {}
    for name in names:
        archive = path / f"{name}.tar"
        try:
            regular = stat.S_ISREG(os.lstat(archive).st_mode)
        except OSError:
            regular = False
        if not regular:
            raise InvalidArgument(f"checkpoint_path {checkpoint_path!r} lacks {archive.name}")
        archives[name] = str(archive)
    return archives
