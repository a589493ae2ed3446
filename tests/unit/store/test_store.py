from __future__ import annotations

import pytest

from criproxy.containers.model import Container, ImageInfo
from criproxy.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from criproxy.oci.container import ContainerConfig
from criproxy.sandbox.model import PodConfig, PodMetadata, Sandbox
from criproxy.store import ContainerStore, Index, NameRegistrar, RecoveredGate, SandboxStore


def _sandbox(sandbox_id: str, state: str = "ready") -> Sandbox:
    return Sandbox(
        sandbox_id,
        PodConfig(PodMetadata("n", "u", "ns")),
        "runc",
        "pause",
        1,
        state=state,  # type: ignore[arg-type]
    )


def _container(container_id: str, sandbox_id: str) -> Container:
    return Container(
        container_id, sandbox_id, ContainerConfig(name="c", image="i"), ImageInfo("i", "i", "i"), 1
    )


def test_an_ambiguous_prefix_is_invalid_and_an_unknown_id_is_none_or_not_found() -> None:
    index: Index[Sandbox] = Index("pod sandbox")
    for sandbox_id in ("abc1" + "0" * 60, "abc2" + "0" * 60):
        index.put(_sandbox(sandbox_id))
    with pytest.raises(InvalidArgument, match="pod sandbox id prefix 'abc' is ambiguous"):
        index.resolve("abc")
    found = index.resolve("abc1")
    assert found is not None and found.id.startswith("abc1")
    assert index.resolve("ffff") is None
    with pytest.raises(NotFound, match="pod sandbox 'ffff' not found"):
        index.require("ffff")


def test_a_name_belongs_to_one_id_until_released() -> None:
    names = NameRegistrar("container")
    names.reserve("web_pod", "id1")
    names.reserve("web_pod", "id1")  # the same id again is fine
    with pytest.raises(AlreadyExists, match="'web_pod' is already reserved for container id1"):
        names.reserve("web_pod", "id2")
    names.release("id2")  # never held: no effect
    assert names.get("web_pod") == "id1"
    names.release("id1")
    assert names.get("web_pod") is None
    names.reserve("web_pod", "id2")
    assert names.get("web_pod") == "id2"


def test_queries_wait_for_the_gate_but_background_work_sees_nothing() -> None:
    gate = RecoveredGate()
    pods, containers = SandboxStore(gate), ContainerStore(gate)
    pods.put(_sandbox("p1"))
    containers.put(_container("c1", "p1"))
    for query in (
        lambda: pods.resolve("p1"),
        lambda: pods.get("p1"),
        pods.pods,
        lambda: containers.get("c1"),
        containers.all,
    ):
        with pytest.raises(Unavailable, match="still loading"):
            query()
    assert pods.pods_if_ready() == [] and containers.all_if_ready() == []
    gate.open()
    assert pods.get("p1").id == "p1" and containers.get("c1").id == "c1"
    with pytest.raises(InvalidArgument, match="pod_sandbox_id is required"):
        pods.resolve("")
    with pytest.raises(InvalidArgument, match="container_id is required"):
        containers.get("")


def test_a_pod_being_set_up_is_not_listed() -> None:
    gate = RecoveredGate()
    gate.open()
    pods = SandboxStore(gate)
    pods.put(_sandbox("ready"))
    pods.put(_sandbox("half", state="creating"))
    assert [p.id for p in pods.pods()] == ["ready"]


def test_pod_membership_follows_puts_and_removes_in_creation_order() -> None:
    gate = RecoveredGate()
    gate.open()
    store = ContainerStore(gate)
    for container_id, pod in (("a", "p1"), ("b", "p2"), ("c", "p1")):
        store.put(_container(container_id, pod), {"id": container_id})
    store.names.reserve("name-a", "a")
    store.undelivered.add("a")
    store.put(_container("a", "p1").with_changes(state="running"))  # a replacement keeps place
    assert [c.id for c in store.pod_containers("p1")] == ["a", "c"]
    assert store.pod_containers("p1")[0].state == "running"
    assert {k: [c.id for c in v] for k, v in store.by_pod(["p1", "p2", "p3"]).items()} == {
        "p1": ["a", "c"],
        "p2": ["b"],
        "p3": [],
    }
    store.remove("a")
    assert [c.id for c in store.pod_containers("p1")] == ["c"]
    assert "a" not in store.specs and "a" not in store.undelivered
    assert store.names.get("name-a") is None
    store.remove("c")
    assert store.pod_containers("p1") == ()


def test_running_and_ready_name_the_state_that_is_not() -> None:
    from criproxy.errors import FailedPrecondition

    gate = RecoveredGate()
    gate.open()
    pods, containers = SandboxStore(gate), ContainerStore(gate)
    pods.put(_sandbox("up"))
    pods.put(_sandbox("down", state="notready"))
    containers.put(_container("run", "up").with_changes(state="running"))
    containers.put(_container("done", "up").with_changes(state="exited"))
    assert pods.ready("up").id == "up" and containers.running("run").id == "run"
    with pytest.raises(FailedPrecondition, match="pod sandbox down is not ready"):
        pods.ready("down")
    with pytest.raises(FailedPrecondition, match="container done is EXITED, not RUNNING"):
        containers.running("done")
    with pytest.raises(NotFound):
        containers.running("gone")
