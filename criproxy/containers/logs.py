"""ReopenContainerLog: the kubelet rotated the log file; the writer opens a new one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy.errors import FailedPrecondition

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps


async def reopen_log(deps: ContainerDeps, container_id: str) -> None:
    container = deps.store.running(container_id)
    io = deps.ios.get(container.id)
    if io is None:
        raise FailedPrecondition(f"container {container.id} has no output to reopen")
    await io.reopen()
