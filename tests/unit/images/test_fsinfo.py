"""ImageFsInfo's sums: committed snapshots measured once, active ones at most every interval."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from criproxy.containerd.snapshots import SnapshotInfo, Usage
from criproxy.errors import NotFound
from criproxy.images import fsinfo
from criproxy.images.fsinfo import ImageFilesystem

pytestmark = pytest.mark.anyio
SECOND = 1_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Snapshots:
    def __init__(self) -> None:
        self.present: dict[str, tuple[str, Usage]] = {}
        self.measured: list[str] = []

    async def list(self, snapshotter: str, *filters: str) -> list[SnapshotInfo]:
        return [SnapshotInfo(n, "", kind, {}) for n, (kind, _) in self.present.items()]

    async def usage(self, snapshotter: str, key: str) -> Usage:
        self.measured.append(key)
        if key not in self.present:
            raise NotFound(f"snapshot {key} not found")
        return self.present[key][1]


class _Introspection:
    async def plugins(self, *filters: str) -> list[Any]:
        return [SimpleNamespace(ok=True, init_error="", exports={"root": "/var/lib/x/overlayfs"})]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [1000 * SECOND]
    monkeypatch.setattr(fsinfo.time, "time_ns", lambda: now[0])
    return now


async def test_committed_once_active_per_interval_removed_dropped(clock: list[int]) -> None:
    snapshots = _Snapshots()
    snapshots.present = {
        "layer": ("committed", Usage(1000, 10)),
        "ctr": ("active", Usage(50, 2)),
    }
    fs = ImageFilesystem(SimpleNamespace(snapshots=snapshots, introspection=_Introspection()), "o")  # type: ignore[arg-type]

    first = await fs.usage()
    assert (first.used_bytes, first.inodes_used, first.mountpoint) == (
        1050,
        12,
        "/var/lib/x/overlayfs",
    )
    assert sorted(snapshots.measured) == ["ctr", "layer"]

    snapshots.measured.clear()
    snapshots.present["ctr"] = ("active", Usage(80, 3))  # the container wrote
    clock[0] += 5 * SECOND
    second = await fs.usage()
    assert snapshots.measured == []  # within the interval: both remembered
    assert (second.used_bytes, second.timestamp_ns) == (1050, first.timestamp_ns)

    clock[0] += int(fsinfo.USAGE_INTERVAL * SECOND)
    third = await fs.usage()
    assert snapshots.measured == ["ctr"]  # the layer never changes
    assert (third.used_bytes, third.inodes_used) == (1080, 13)
    assert third.timestamp_ns == first.timestamp_ns  # the oldest measurement's

    snapshots.measured.clear()
    del snapshots.present["ctr"]
    snapshots.present["layer2"] = ("committed", Usage(7, 1))
    fourth = await fs.usage()
    assert snapshots.measured == ["layer2"]
    assert (fourth.used_bytes, fourth.inodes_used) == (1007, 11)


async def test_a_snapshot_gone_between_list_and_usage_is_not_counted(clock: list[int]) -> None:
    snapshots = _Snapshots()
    snapshots.present = {"layer": ("committed", Usage(1000, 10))}
    real_usage = snapshots.usage

    async def racing(snapshotter: str, key: str) -> Usage:
        snapshots.present.pop(key)
        return await real_usage(snapshotter, key)

    snapshots.usage = racing  # type: ignore[method-assign]
    fs = ImageFilesystem(SimpleNamespace(snapshots=snapshots, introspection=_Introspection()), "o")  # type: ignore[arg-type]
    usage = await fs.usage()
    assert (usage.used_bytes, usage.inodes_used, usage.timestamp_ns) == (0, 0, clock[0])
