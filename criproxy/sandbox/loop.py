"""The per-pod event loop: one task per pod that runs every state change of that pod.

Requests (stop, remove) and containerd events (task exits) for one pod are serialised
here, so they never race; different pods never wait for each other. List and Status do
not go through the loop: they read the last state from memory.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy import tracing
from criproxy.errors import NotFound

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

log = structlog.get_logger("criproxy.sandbox.loop")

Job = Callable[[], Awaitable[Any]]


@dataclass
class _Work:
    job: Job
    done: anyio.Event = field(default_factory=anyio.Event)
    posted: bool = False
    trace: Any = None
    """The caller's trace context (tracing on): the job's spans are the call's children."""
    result: Any = None
    error: BaseException | None = None


class PodLoop:
    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self._send, self._receive = anyio.create_memory_object_stream[_Work](math.inf)

    async def run(self) -> None:
        """Runs until `close`; one job at a time, in order."""
        bound = log.bind(sandbox=self.sandbox_id)
        async with self._receive:
            async for work in self._receive:
                try:
                    with tracing.attached(work.trace):
                        work.result = await work.job()
                except Exception as err:  # handed to the caller, or logged for events
                    work.error = err
                finally:
                    work.done.set()
                if work.error is not None and work.posted:
                    bound.warning("pod loop job failed", error=str(work.error))

    async def call(self, job: Job) -> Any:
        """Run `job` in the loop and return its result (or raise its error)."""
        work = _Work(job, trace=tracing.current())
        self._send.send_nowait(work)
        # The job runs in the loop's task: a caller that goes away does not abandon it.
        await work.done.wait()
        if work.error is not None:
            raise work.error
        return work.result

    def post(self, job: Job) -> None:
        """Queue `job` without waiting (containerd events)."""
        self._send.send_nowait(_Work(job, posted=True))

    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    def close(self) -> None:
        self._send.close()


class PodLoops:
    """Every pod's loop, started on first use in the owner's task group (the sandbox
    service's run) and closed when the pod is removed."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        """Whether a pod exists (its loop may run jobs)."""
        self._loops: dict[str, PodLoop] = {}
        self._tg: TaskGroup | None = None
        self._started = anyio.Event()

    async def run(self) -> None:
        """Owns the loops; runs until cancelled (server shutdown)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._started.set()
            await anyio.sleep_forever()

    async def task_group(self) -> TaskGroup:
        """The owner's task group, for work that must outlive the call that starts it."""
        await self._started.wait()
        assert self._tg is not None
        return self._tg

    def loop(self, sandbox_id: str) -> PodLoop:
        loop = self._loops.get(sandbox_id)
        if loop is None:
            loop = PodLoop(sandbox_id)
            self._loops[sandbox_id] = loop
            assert self._tg is not None, "PodLoops.run is not running"
            self._tg.start_soon(loop.run)
        return loop

    async def call(self, sandbox_id: str, job: Job) -> Any:
        """Run `job` in the pod's loop, serialised with every other change of the pod."""
        if not self._known(sandbox_id):
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return await self.loop(sandbox_id).call(job)

    def post(self, sandbox_id: str, job: Job) -> None:
        """Queue `job` in the pod's loop without waiting (containerd events, reconciles)."""
        if self._known(sandbox_id):
            self.loop(sandbox_id).post(job)

    def queued(self) -> int:
        """Jobs waiting in every pod's loop (the metrics' queue depth)."""
        # read from the metrics endpoint's thread: a copy, as the loop may change the dict
        return sum(loop.queued() for loop in list(self._loops.values()))

    def get(self, sandbox_id: str) -> PodLoop | None:
        return self._loops.get(sandbox_id)

    def close(self, sandbox_id: str, loop: PodLoop | None = None) -> None:
        """End the pod's loop after its current job (only `loop`, when given)."""
        current = self._loops.get(sandbox_id)
        if current is not None and (loop is None or current is loop):
            self._loops.pop(sandbox_id).close()
