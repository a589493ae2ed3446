"""CreateContainer and RemoveContainer: their steps and undo, over the in-memory double."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from criproxy.errors import AlreadyExists, FailedPrecondition, Unavailable
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


async def test_a_create_that_finds_its_pod_stopped_meanwhile_frees_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod was ready when the call came and stopped before its turn in the pod's loop:
    FAILED_PRECONDITION, and the name is free again (the kubelet makes the same name in
    the pod's next sandbox)."""
    async with node(tmp_path) as n:
        pod = await n.sandboxes.run_pod(host_pod("app"), "")
        tasks = n.containerd.tasks
        stopping, go_on = anyio.Event(), anyio.Event()
        kill_and_delete = tasks.kill_and_delete

        async def held(*args: object, **kwargs: object) -> object:
            stopping.set()  # the stop's job holds the pod's loop here
            await go_on.wait()
            return await kill_and_delete(*args, **kwargs)

        monkeypatch.setattr(tasks, "kill_and_delete", held)
        failures: list[FailedPrecondition] = []

        async def create() -> None:
            try:
                await n.containers.create(pod, container("web"))
            except FailedPrecondition as err:
                failures.append(err)

        async with anyio.create_task_group() as tg:
            tg.start_soon(n.sandboxes.stop_pod, pod)
            await stopping.wait()
            tg.start_soon(create)  # the pod is still ready: the call queues its job
            await anyio.wait_all_tasks_blocked()
            go_on.set()
        assert len(failures) == 1
        assert "is not ready" in failures[0].message
        monkeypatch.undo()
        await n.sandboxes.remove_pod(pod)
        again = await n.sandboxes.run_pod(host_pod("app"), "")
        created = await n.containers.create(again, container("web"))
        assert n.containers.get(created).state == "created"
