"""ExecSync: a process in a running container, its output captured (each stream capped at
16 MiB). Past the timeout the process is killed and DEADLINE_EXCEEDED raised. Streaming
exec sessions will live beside it."""

from __future__ import annotations

import contextlib
import secrets
import shlex
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containers.deps import IO_DRAIN, KILL_WAIT
from criproxy.containers.io import ExecIO
from criproxy.errors import CriproxyError, DeadlineExceeded, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps

log = structlog.get_logger("criproxy.containers")


async def exec_sync(
    deps: ContainerDeps, container_id: str, cmd: list[str], timeout: float
) -> tuple[bytes, bytes, int]:
    """(stdout, stderr, exit code); `timeout` 0 is none."""
    container = deps.store.get(container_id)
    if container.state != "running":
        raise FailedPrecondition(
            f"container {container.id} is {container.state.upper()}, not RUNNING"
        )
    if not cmd:
        raise InvalidArgument("cmd is required")
    spec = deps.store.specs.get(container.id) or {}
    process = dict(spec.get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = False
    exec_id = secrets.token_hex(16)
    tasks = deps.containerd.tasks
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
                exit_code = await _wait(deps, container.id, exec_id, cmd, timeout)
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


async def _wait(
    deps: ContainerDeps, container_id: str, exec_id: str, cmd: list[str], timeout: float
) -> int:
    tasks = deps.containerd.tasks
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
