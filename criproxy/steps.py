"""Steps of a call that each register their undo, and steps that run side by side.

A call that creates several things (a pod: netns, snapshot, record, task, CNI network; a
container: snapshot, record, files) pushes one undo per step as it goes; any failure or
cancellation unwinds them in reverse, shielded, so no path leaks what was made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from structlog.typing import FilteringBoundLogger

A = TypeVar("A")
B = TypeVar("B")


class UndoStack:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._undos: list[Callable[[], Awaitable[Any]]] = []

    def push(self, undo: Callable[[], Awaitable[Any]]) -> None:
        self._undos.append(undo)

    def push_sync(self, undo: Callable[[], object]) -> None:
        """A blocking undo (file work), run in a worker thread."""
        self._undos.append(lambda: anyio.to_thread.run_sync(undo))

    async def unwind(self) -> None:
        """Every undo, last first; one that fails is logged and the rest still run."""
        with anyio.CancelScope(shield=True):
            while self._undos:
                undo = self._undos.pop()
                try:
                    await undo()
                except Exception as err:
                    self._log.warning("clean-up step failed", error=str(err))


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two independent steps concurrently; a failure of one cancels the other."""
    results: dict[int, Any] = {}

    async def run(i: int, step: Awaitable[Any]) -> None:
        results[i] = await step

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]
