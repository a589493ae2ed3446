"""The per-pod event loop: one task per pod that runs every state change of that pod.

Requests (stop, remove) and containerd events (task exits) for one pod are serialised
here, so they never race; different pods never wait for each other. List and Status do
not go through the loop: they read the last state from memory.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

log = structlog.get_logger("criproxy.sandbox.loop")

Job = Callable[[], Awaitable[Any]]


@dataclass
class _Work:
    job: Job
    done: anyio.Event = field(default_factory=anyio.Event)
    posted: bool = False
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
                    work.result = await work.job()
                except Exception as err:  # handed to the caller, or logged for events
                    work.error = err
                finally:
                    work.done.set()
                if work.error is not None and work.posted:
                    bound.warning("pod loop job failed", error=str(work.error))

    async def call(self, job: Job) -> Any:
        """Run `job` in the loop and return its result (or raise its error)."""
        work = _Work(job)
        self._send.send_nowait(work)
        # The job runs in the loop's task: a caller that goes away does not abandon it.
        await work.done.wait()
        if work.error is not None:
            raise work.error
        return work.result

    def post(self, job: Job) -> None:
        """Queue `job` without waiting (containerd events)."""
        self._send.send_nowait(_Work(job, posted=True))

    def close(self) -> None:
        self._send.close()
