"""RunPodSandbox's steps and their undo, over the in-memory containerd double."""

from __future__ import annotations

from pathlib import Path

import pytest

from criproxy.errors import AlreadyExists, Internal
from tests.support.lifecycle import host_pod, node

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_pause_task_that_fails_to_start_leaves_nothing_and_frees_the_name(
    tmp_path: Path,
) -> None:
    async with node(tmp_path) as n:
        cd = n.containerd
        cd.fail["tasks.start"] = Internal("runc: exec format error")
        with pytest.raises(Internal, match="exec format error"):
            await n.sandboxes.run_pod(host_pod("web"), "")
        failed = next(c.split()[1] for c in cd.calls if c.startswith("tasks.start"))
        # the undo ran last-made first: the task, then the record, then the snapshot
        undo = [c for c in cd.calls if c.endswith(failed)][-3:]
        assert undo == [
            f"tasks.delete {failed}",
            f"containers.delete {failed}",
            f"snapshots.remove {failed}",
        ]
        state = cd.state
        assert (state.records, state.snapshots, state.tasks, state.leases) == ({}, {}, {}, {})
        assert not any((n.config.root / "sandboxes").iterdir())
        assert not any((n.config.state / "sandboxes").iterdir())
        assert n.sandboxes.pods() == []

        del cd.fail["tasks.start"]
        sandbox_id = await n.sandboxes.run_pod(host_pod("web"), "")
        assert sandbox_id != failed
        assert n.sandboxes.get(sandbox_id).state == "ready"
        assert b'"state": "ready"' in state.records[sandbox_id].extensions["sandbox"]
        assert state.leases == {}  # the set-up lease went with the set-up


async def test_a_name_in_use_is_already_exists_and_free_again_after_remove(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        first = await n.sandboxes.run_pod(host_pod("db"), "")
        with pytest.raises(AlreadyExists, match=f"already reserved for sandbox {first}"):
            await n.sandboxes.run_pod(host_pod("db"), "")
        await n.sandboxes.stop_pod(first)
        assert n.sandboxes.get(first).state == "notready"
        await n.sandboxes.remove_pod(first)
        assert n.containerd.state.records == {} and n.containerd.state.snapshots == {}
        second = await n.sandboxes.run_pod(host_pod("db"), "")
        assert second != first
