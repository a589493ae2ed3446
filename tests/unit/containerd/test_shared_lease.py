"""`Containerd.leased` with a background task group: one lease per prefix, shared by every
caller while it is young, so a pod set-up makes no lease round trip; a retired lease is
deleted once its last caller leaves."""

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


async def test_callers_share_one_lease_per_prefix_made_once_for_a_burst() -> None:
    containerd = Containerd("/nonexistent/containerd.sock", "k8s.io")
    leases = containerd.__dict__["leases"] = _Leases()
    seen: list[str] = []
    async with anyio.create_task_group() as tg:

        async def setup() -> None:
            async with containerd.leased("p", HOUR, release_in=tg) as view:
                seen.append(view._channel.lease)
                await checkpoint()

        async with anyio.create_task_group() as burst:
            for _ in range(10):
                burst.start_soon(setup)
        async with containerd.leased("p", HOUR, release_in=tg) as view:
            assert view._channel.lease == "p-0"
        async with containerd.leased("q", HOUR, release_in=tg) as view:  # its own
            assert view._channel.lease == "q-1"
        await _settle()
    assert seen == ["p-0"] * 10
    assert leases.made == ["p-0", "q-1"]
    assert leases.deleted == []  # the current lease stays for the next caller


async def test_without_a_task_group_a_lease_is_the_callers_own() -> None:
    containerd = Containerd("/nonexistent/containerd.sock", "k8s.io")
    leases = containerd.__dict__["leases"] = _Leases()
    async with containerd.leased("p", HOUR) as view:
        assert view._channel.lease == "p-0"
        assert leases.deleted == []
    assert leases.deleted == ["p-0"]


async def test_an_old_lease_is_retired_and_deleted_after_its_last_caller() -> None:
    containerd = Containerd("/nonexistent/containerd.sock", "k8s.io")
    leases = containerd.__dict__["leases"] = _Leases()
    async with anyio.create_task_group() as tg:
        async with containerd.leased("p", HOUR, release_in=tg):
            containerd._shared["p"].made -= HOUR.total_seconds()  # its expiry is near
            async with containerd.leased("p", HOUR, release_in=tg) as view:
                assert view._channel.lease == "p-1"  # a new one, made afresh
                await _settle()
                assert leases.deleted == []  # p-0 still has its caller
            await _settle()
            assert leases.deleted == []
        await _settle()
        assert leases.deleted == ["p-0"]  # its last caller left

        containerd._shared["p"].made -= HOUR.total_seconds()
        async with containerd.leased("p", HOUR, release_in=tg) as view:
            assert view._channel.lease == "p-2"
            await _settle()
            assert leases.deleted == ["p-0", "p-1"]  # no caller: deleted at once
        await _settle()
    assert leases.deleted == ["p-0", "p-1"]
