"""Processes run in a running container. ExecSync captures their output (each stream
capped at 16 MiB); past the timeout the process is killed and DEADLINE_EXCEEDED raised. A
streaming session (kubectl exec) wires them to the client's streams instead."""

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
from criproxy.containers.io import ExecIO, FifoReader, FifoWriter, create_fifos
from criproxy.errors import (
    CriproxyError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.streams import ExecRequest, OutputStream, SessionStreams

log = structlog.get_logger("criproxy.containers")


async def exec_sync(
    deps: ContainerDeps, container_id: str, cmd: list[str], timeout: float
) -> tuple[bytes, bytes, int]:
    """(stdout, stderr, exit code); `timeout` 0 is none."""
    container = deps.store.running(container_id)
    if not cmd:
        raise InvalidArgument("cmd is required")
    spec = deps.store.specs.get(container.id) or {}
    process = dict(spec.get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = False
    exec_id = secrets.token_hex(16)
    tasks = deps.containerd.tasks
    exit_code = 0
    io = await ExecIO.create(Path(container.io_dir), exec_id)  # capped at 16 MiB
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            try:
                async with _owned(deps, container.id, exec_id):
                    await tasks.exec(
                        container.id,
                        exec_id,
                        process,
                        stdout=io.fifos.stdout,
                        stderr=io.fifos.stderr,
                    )

                    async def wait() -> None:
                        nonlocal exit_code
                        exit_code = await _wait(deps, container.id, exec_id, cmd, timeout)

                    async with anyio.create_task_group() as waiting:
                        waiting.start_soon(wait)
                        await tasks.start(container.id, exec_id)
                    await io.wait_drained(IO_DRAIN)
            finally:
                tg.cancel_scope.cancel()
    finally:
        io.close()
    return io.stdout, io.stderr, exit_code


async def _wait(
    deps: ContainerDeps, container_id: str, exec_id: str, cmd: list[str], timeout: float
) -> int:
    """Asked before the process is started (containerd answers once it exits, however
    early), so that its exit comes back with no further round trip."""
    tasks = deps.containerd.tasks
    deadline = time.monotonic() + timeout
    try:
        info = await tasks.wait(container_id, exec_id, timeout if timeout > 0 else None)
    except CriproxyError:
        # containerd's own context may expire first and answer UNKNOWN for it.
        if timeout <= 0 or time.monotonic() < deadline:
            raise
    else:
        return info.exit_status
    # exec_sync's failure path kills the process and waits for it.
    raise DeadlineExceeded(f"command {shlex.join(cmd)!r} timed out after {timeout:g}s (killed)")


async def exec_session(deps: ContainerDeps, request: ExecRequest, streams: SessionStreams) -> int:
    """A streaming exec (kubectl exec): the process's stdin, output and terminal wired to
    the client's streams; its exit code. The client going away (this call cancelled) kills
    and deletes the process; the end of its stdin is containerd's CloseIO, so a shell
    reading stdin ends."""
    container = deps.store.running(request.container_id)
    spec = deps.store.specs.get(container.id) or {}
    process = dict(spec.get("process") or {})
    process["args"] = list(request.cmd)
    process["terminal"] = request.tty
    exec_id = secrets.token_hex(16)
    bound = log.bind(container=container.id, exec_id=exec_id)
    # Output FIFOs whether the client wants the stream or not (the shim opens both; what
    # nobody asked for is read and dropped). Metadata calls on the state dir: no thread.
    fifos = create_fifos(
        Path(container.io_dir), exec_id, stdin=request.stdin, stdout=True, stderr=not request.tty
    )
    io = _SessionIO()
    tasks = deps.containerd.tasks
    try:
        io.open(fifos.stdin, fifos.stdout, fifos.stderr)
        await tasks.exec(
            container.id,
            exec_id,
            process,
            stdin=fifos.stdin,
            stdout=fifos.stdout,
            stderr=fifos.stderr,
            terminal=request.tty,
        )
        async with _owned(deps, container.id, exec_id):
            exit_code = await _serve(deps, container.id, exec_id, streams, io)
    finally:
        io.close()
        with contextlib.suppress(Internal):
            fifos.remove()
    bound.debug("exec session ended", exit_code=exit_code)
    return exit_code


@contextlib.asynccontextmanager
async def _owned(deps: ContainerDeps, container_id: str, exec_id: str) -> AsyncIterator[None]:
    """An exec process criproxy answers for: ended (SIGKILL) and deleted when the call
    fails or is cancelled before it exits (a timeout, a client that went away); once it has
    exited, deleted in the background, so that its exit code reaches the client without
    waiting for containerd's cleanup (a criproxy killed in that millisecond leaves the shim
    a record of an exited process, gone with the container's task)."""
    tasks = deps.containerd.tasks
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(CriproxyError):
                await tasks.kill(container_id, signal.SIGKILL, exec_id=exec_id)
                await tasks.wait(container_id, exec_id, KILL_WAIT)
            await _delete(deps, container_id, exec_id)
        raise
    deps.background.start_soon(_delete, deps, container_id, exec_id)


async def _delete(deps: ContainerDeps, container_id: str, exec_id: str) -> None:
    try:
        await deps.containerd.tasks.delete_process(container_id, exec_id)
    except CriproxyError as err:
        log.debug("exec not deleted", exec_id=exec_id, error=err.message)


class _SessionIO:
    """Our ends of a streaming exec's FIFOs."""

    def __init__(self) -> None:
        self.stdin: FifoWriter | None = None
        self.stdout: FifoReader | None = None
        self.stderr: FifoReader | None = None

    def open(self, stdin: str, stdout: str, stderr: str) -> None:
        self.stdout = FifoReader.open(stdout) if stdout else None
        self.stderr = FifoReader.open(stderr) if stderr else None
        self.stdin = FifoWriter.open(stdin) if stdin else None

    def close(self) -> None:
        for end in (self.stdin, self.stdout, self.stderr):
            if end is not None:
                end.close()


async def _serve(
    deps: ContainerDeps, container_id: str, exec_id: str, streams: SessionStreams, io: _SessionIO
) -> int:
    """Start the process and pump until it has exited and its output is drained (or
    `IO_DRAIN` has passed: a child may hold the FIFOs); its exit code."""
    tasks = deps.containerd.tasks
    drain = anyio.CancelScope()

    async def outputs() -> None:
        with drain:
            async with anyio.create_task_group() as pumps:
                if io.stdout is not None:
                    pumps.start_soon(_copy_out, io.stdout, streams.stdout)
                if io.stderr is not None:
                    pumps.start_soon(_copy_out, io.stderr, streams.stderr)

    exit_code = 0

    async def wait(inputs: anyio.CancelScope) -> None:
        nonlocal exit_code
        exit_code = (await tasks.wait(container_id, exec_id, None)).exit_status
        inputs.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(outputs)
        async with anyio.create_task_group() as inputs:
            inputs.start_soon(wait, inputs.cancel_scope)  # asked before the start: see _wait
            await tasks.start(container_id, exec_id)
            if io.stdin is not None and streams.stdin is not None:
                inputs.start_soon(_copy_in, deps, container_id, exec_id, streams, io.stdin)
            if streams.resize is not None:
                inputs.start_soon(resize, deps, container_id, exec_id, streams)
        drain.deadline = anyio.current_time() + IO_DRAIN
    return exit_code


async def _copy_out(reader: FifoReader, sink: OutputStream | None) -> None:
    with contextlib.suppress(anyio.ClosedResourceError):
        while data := await reader.read():
            if sink is not None:
                await sink.send(data)


async def _copy_in(
    deps: ContainerDeps,
    container_id: str,
    exec_id: str,
    streams: SessionStreams,
    stdin: FifoWriter,
) -> None:
    assert streams.stdin is not None
    try:
        while True:
            await stdin.write(await streams.stdin.receive())
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    stdin.close()
    with contextlib.suppress(CriproxyError):
        await deps.containerd.tasks.close_io(container_id, exec_id)


async def resize(
    deps: ContainerDeps, container_id: str, exec_id: str, streams: SessionStreams
) -> None:
    """Terminal size changes to the process's pty (exec id "": the container's own)."""
    assert streams.resize is not None
    async for size in streams.resize:
        with contextlib.suppress(CriproxyError):
            await deps.containerd.tasks.resize_pty(container_id, exec_id, size.width, size.height)
