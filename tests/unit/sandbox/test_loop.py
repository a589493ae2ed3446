from __future__ import annotations

import anyio
import pytest

from criproxy.sandbox.loop import PodLoop

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_jobs_of_one_pod_run_one_at_a_time_in_order() -> None:
    loop = PodLoop("pod")
    trace: list[str] = []

    def job(name: str, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> str:
            trace.append(f"{name} start")
            await anyio.sleep(delay)
            trace.append(f"{name} end")
            return name

        return run

    results: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)

        async def call(name: str, delay: float) -> None:
            results.append(await loop.call(job(name, delay)))

        tg.start_soon(call, "a", 0.05)
        await anyio.sleep(0.01)
        loop.post(job("event", 0.0))
        tg.start_soon(call, "b", 0.0)
        await anyio.sleep(0.2)
        loop.close()
    assert trace == ["a start", "a end", "event start", "event end", "b start", "b end"]
    assert results == ["a", "b"]


async def test_errors_reach_the_caller_and_the_loop_goes_on() -> None:
    loop = PodLoop("pod")

    async def boom() -> None:
        raise ValueError("no")

    async def fine() -> int:
        return 7

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)
        with pytest.raises(ValueError, match="no"):
            await loop.call(boom)
        loop.post(boom)  # a failing event job is logged, not fatal
        assert await loop.call(fine) == 7
        loop.close()
