from __future__ import annotations

import anyio
import pytest

from criproxy.images.pull import Progress, SingleFlight

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_singleflight_shares_one_run() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = anyio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    results: list[int] = []

    async def call() -> None:
        results.append(await flight.do("k", work))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
        await anyio.sleep(0.05)
        gate.set()
    assert results == [42] * 5
    assert runs == 1


async def test_singleflight_shares_errors_and_reruns_after_cancellation() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def boom() -> int:
        await anyio.sleep(0.01)
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await flight.do("k", boom)

    started = anyio.Event()

    async def slow() -> int:
        started.set()
        await anyio.sleep(10)
        return 1

    async def quick() -> int:
        return 2

    results: list[int] = []
    first = anyio.CancelScope()

    async def leader() -> None:
        with first:
            await flight.do("k", slow)

    async def follower() -> None:
        results.append(await flight.do("k", quick))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await started.wait()
        tg.start_soon(follower)
        await anyio.sleep(0.01)
        first.cancel()  # the leader's caller went away: the follower runs it anew
    assert results == [2]


def test_progress_counts_an_unpack_in_flight_as_moving() -> None:
    progress = Progress(last=0.0)
    assert progress.stalled_for() > 0
    progress.unpacking = 1
    assert progress.stalled_for() == 0
    progress.unpacking = 0
    progress.add("sha256:x", 10)
    assert progress.stalled_for() < 1
    assert progress.done == {"sha256:x": 10}
