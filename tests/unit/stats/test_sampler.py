"""The sampler: cgroupfs first (a temp dir laid out as cgroup v2 and /proc), containerd's
task metrics (a stand-in that records what it was asked) for what cgroupfs cannot answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from criproxy.stats.sampler import Sampler


class _Tasks:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def metrics(self, ids: list[str], timeout: float) -> list[Any]:
        self.asked.append(list(ids))
        return []


class _Containerd:
    def __init__(self) -> None:
        self.tasks = _Tasks()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    _write(root / "cgroup.controllers", "cpu memory pids\n")
    scope = root / "k" / "cri-containerd-aaa.scope"
    _write(scope / "cpu.stat", "usage_usec 1000\n")
    _write(scope / "memory.current", "4096\n")
    _write(proc / "10" / "cgroup", "0::/k/cri-containerd-aaa.scope\n")
    _write(root / "k" / "someone-else.scope" / "cpu.stat", "usage_usec 5\n")
    _write(proc / "11" / "cgroup", "0::/k/someone-else.scope\n")  # a pid reused
    return root, proc


def test_cgroupfs_answers_and_containerd_only_for_the_rest(tree: tuple[Path, Path]) -> None:
    root, proc = tree
    containerd = _Containerd()
    sampler = Sampler(containerd, "overlayfs", cgroup_root=root, proc=proc)  # type: ignore[arg-type]
    samples = anyio.run(sampler.sample, {"aaa": 10, "bbb": 11, "ccc": 0})
    assert list(samples) == ["aaa"]
    assert (samples["aaa"].cpu_usage_ns, samples["aaa"].memory_usage_bytes) == (1_000_000, 4096)
    assert containerd.tasks.asked == [["bbb", "ccc"]]

    _write(root / "k" / "cri-containerd-aaa.scope" / "cpu.stat", "usage_usec 3000\n")
    again = anyio.run(sampler.sample, {"aaa": 10})
    assert again["aaa"].cpu_usage_ns == 3_000_000
    assert sampler.nano_cores("aaa") > 0  # from the two readings
    assert containerd.tasks.asked == [["bbb", "ccc"]]  # nothing more asked of containerd


def test_a_cgroup_that_is_gone_falls_back_and_keeps_the_last_sample(
    tree: tuple[Path, Path],
) -> None:
    root, proc = tree
    containerd = _Containerd()
    sampler = Sampler(containerd, "overlayfs", cgroup_root=root, proc=proc)  # type: ignore[arg-type]
    first = anyio.run(sampler.sample, {"aaa": 10})["aaa"]
    for name in ("cpu.stat", "memory.current"):
        (root / "k" / "cri-containerd-aaa.scope" / name).unlink()
    assert anyio.run(sampler.sample, {"aaa": 10}) == {"aaa": first}
    assert containerd.tasks.asked == [["aaa"]]
