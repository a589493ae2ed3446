"""Attach: a client joins a running container's own stdin and output (the FIFOs criproxy
already reads for the log). Several clients may attach at once; each sees the output from
the moment it joined, and the log keeps everything. With `stdin_once` the container's
stdin closes when the first attached client's input ends."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containers.exec import resize
from criproxy.errors import CriproxyError, FailedPrecondition

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.io import Attacher, ContainerIO
    from criproxy.containers.streams import AttachRequest, SessionStreams

log = structlog.get_logger("criproxy.containers")


async def attach_session(
    deps: ContainerDeps, request: AttachRequest, streams: SessionStreams
) -> int:
    """Until the container's output ends (it exited) or the client goes away; 0."""
    container = deps.store.running(request.container_id)
    io = deps.ios.get(container.id)
    if io is None:
        raise FailedPrecondition(f"container {container.id} has no output to attach to")
    if request.stdin and io.stdin is None:
        raise FailedPrecondition(
            f"container {container.id} was created without stdin: there is none to attach"
        )
    attacher = io.add_attacher(stdout=request.stdout, stderr=request.stderr)
    bound = log.bind(container=container.id)
    bound.debug("client attached")
    try:
        async with anyio.create_task_group() as tg:
            if request.stdin and streams.stdin is not None:
                tg.start_soon(_copy_in, deps, io, streams)
            if streams.resize is not None:
                tg.start_soon(resize, deps, container.id, "", streams)
            await _copy_out(attacher, streams)
            tg.cancel_scope.cancel()
    finally:
        io.remove_attacher(attacher)
        bound.debug("client detached")
    return 0


async def _copy_out(attacher: Attacher, streams: SessionStreams) -> None:
    async with attacher.output:
        async for stream, data in attacher.output:
            sink = streams.stdout if stream == "stdout" else streams.stderr
            if sink is not None:
                await sink.send(data)


async def _copy_in(deps: ContainerDeps, io: ContainerIO, streams: SessionStreams) -> None:
    assert streams.stdin is not None and io.stdin is not None
    try:
        while True:
            data = await streams.stdin.receive()
            if io.stdin.closed:
                return
            await io.stdin.write(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    if io.stdin_once:
        # The container's stdin EOF: our end of its FIFO, and the shim's copy (as
        # containerd's CRI closes a StdinOnce container's stdin after the first attach).
        io.stdin.close()
        with contextlib.suppress(CriproxyError):
            await deps.containerd.tasks.close_io(io.container_id)
