"""`Containerd.leased` with a background task group: the next lease of a prefix is made
after the work, and the next caller takes it with no round trip on its path."""

from __future__ import annotations

import datetime

import anyio
import anyio.lowlevel
import pytest
from anyio.lowlevel import checkpoint

from criproxy.containerd import Containerd

pytestmark = pytest.mark.anyio

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Leases:
    def __init__(self) -> None:
        self.made: list[str] = []
        self.deleted: list[str] = []

    async def create(self, prefix: str, expire_after: datetime.timedelta) -> str:
        await checkpoint()
        lease = f"{prefix}-{len(self.made)}"
        self.made.append(lease)
        return lease

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        await checkpoint()
        self.deleted.append(lease_id)


async def _settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def test_a_spare_is_made_after_the_work_and_taken_by_the_next_caller() -> None:
    containerd = Containerd("/nonexistent/containerd.sock", "k8s.io")
    leases = containerd.__dict__["leases"] = _Leases()
    async with anyio.create_task_group() as tg:
        async with containerd.leased("p", HOUR, release_in=tg) as view:
            assert leases.made == ["p-0"]  # no spare yet: made on the caller's path
            assert view.namespace == "k8s.io"
            await _settle()
            assert leases.made == ["p-0"]  # nothing made beside the work
        await _settle()
        assert (leases.made, leases.deleted) == (["p-0", "p-1"], ["p-0"])

        async with containerd.leased("p", HOUR, release_in=tg):
            assert leases.made == ["p-0", "p-1"]  # the spare: no round trip
        await _settle()
        assert (leases.made, leases.deleted) == (["p-0", "p-1", "p-2"], ["p-0", "p-1"])

        async with containerd.leased("q", HOUR, release_in=tg):  # prefixes keep their own
            assert leases.made[-1] == "q-3"
        async with containerd.leased("p", HOUR):  # no task group: no spare used or made
            assert leases.made[-1] == "p-4"
        await _settle()
    assert "p-2" not in leases.deleted  # the spare waits for its caller


async def test_an_old_spare_is_deleted_not_used() -> None:
    containerd = Containerd("/nonexistent/containerd.sock", "k8s.io")
    leases = containerd.__dict__["leases"] = _Leases()
    async with anyio.create_task_group() as tg:
        async with containerd.leased("p", HOUR, release_in=tg):
            pass
        await _settle()
        lease, made = containerd._spares["p"]
        containerd._spares["p"] = (lease, made - HOUR.total_seconds())  # its expiry is near
        async with containerd.leased("p", HOUR, release_in=tg):
            assert leases.made == ["p-0", "p-1", "p-2"]  # made afresh
        await _settle()
    assert "p-1" in leases.deleted
