"""CreateContainer and RemoveContainer: their steps and undo, over the in-memory double."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from criproxy.errors import AlreadyExists, Unavailable
from tests.support.lifecycle import container, host_pod, node

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_record_that_cannot_be_made_leaves_no_snapshot_or_dirs_and_frees_the_name(
    tmp_path: Path,
) -> None:
    async with node(tmp_path) as n:
        pod = await n.sandboxes.run_pod(host_pod("app"), "")
        cd = n.containerd
        cd.fail["containers.create"] = Unavailable("containerd is restarting")
        with pytest.raises(Unavailable):
            await n.containers.create(pod, container("web"))
        assert list(cd.state.snapshots) == [pod]  # only the pause container's
        assert list(cd.state.records) == [pod]
        io_root = n.config.state / "containers"
        assert not io_root.exists() or not any(io_root.iterdir())
        assert n.containers.all() == []

        del cd.fail["containers.create"]
        created = await n.containers.create(pod, container("web"))
        assert n.containers.get(created).state == "created"
        with pytest.raises(AlreadyExists, match=f"reserved for container {created}"):
            await n.containers.create(pod, container("web"))


async def test_remove_deletes_the_record_first_then_the_snapshot_and_frees_the_name(
    tmp_path: Path,
) -> None:
    async with node(tmp_path) as n:
        pod = await n.sandboxes.run_pod(host_pod("app"), "")
        created = await n.containers.create(pod, container("job"))
        cd = n.containerd
        before = len(cd.calls)
        await n.containers.remove(created)
        # answered once the record is gone: a criproxy killed now never lists it again
        assert created not in cd.state.records
        await anyio.wait_all_tasks_blocked()  # the snapshot goes right after the answer
        removal = [c for c in cd.calls[before:] if c.endswith(created)]
        assert removal == [f"containers.delete {created}", f"snapshots.remove {created}"]
        assert created not in cd.state.snapshots
        assert n.containers.resolve(created) is None
        again = await n.containers.create(pod, container("job"))
        assert again != created


async def test_removing_a_pod_removes_its_containers_first(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        pod = await n.sandboxes.run_pod(host_pod("app"), "")
        ids = [await n.containers.create(pod, container(f"c{i}")) for i in range(3)]
        await n.sandboxes.remove_pod(pod)
        deletes = [c.split()[1] for c in n.containerd.calls if c.startswith("containers.delete")]
        assert deletes == [*ids, pod]
        assert n.containers.all() == [] and n.sandboxes.pods() == []
