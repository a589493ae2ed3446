"""The order of a container's exit and OOM events, over an in-memory record store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from criproxy.config import Config
from criproxy.containers import exits
from criproxy.containers.deps import ContainerDeps, ContainerPaths
from criproxy.containers.model import Container, ImageInfo
from criproxy.oci.container import ContainerConfig
from criproxy.store import ContainerStore, RecoveredGate

pytestmark = pytest.mark.anyio


class _Records:
    """containerd's containers service, as far as persisting criproxy's JSON goes."""

    def __init__(self) -> None:
        self.extensions: dict[str, dict[str, bytes]] = {}

    async def set_extensions(self, container_id: str, extensions: dict[str, bytes]) -> None:
        self.extensions[container_id] = extensions


class _Containerd:
    def __init__(self) -> None:
        self.containers = _Records()


def _deps(container: Container) -> tuple[ContainerDeps, _Records]:
    gate = RecoveredGate()
    gate.open()
    store = ContainerStore(gate)
    store.put(container)
    containerd = _Containerd()
    config = Config()
    deps = ContainerDeps(
        config=config,
        containerd=containerd,  # type: ignore[arg-type]
        images=None,  # type: ignore[arg-type]
        pods=None,  # type: ignore[arg-type]
        store=store,
        paths=ContainerPaths.of(config),
    )
    return deps, containerd.containers


def _container(**changes: Any) -> Container:
    return Container(
        "c1", "p1", ContainerConfig(name="c", image="i"), ImageInfo("i", "i", "i"), 1
    ).with_changes(**changes)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_oom_reported_after_the_exit_makes_the_reason_oomkilled() -> None:
    deps, records = _deps(_container(state="exited", exit_code=137, reason=""))
    await exits.oom(deps, "c1")
    stored = deps.store.index.get("c1")
    assert stored is not None and stored.reason == "OOMKilled" and stored.oom_killed
    assert json.loads(records.extensions["c1"]["container"])["reason"] == "OOMKilled"


async def test_an_oom_while_running_only_marks_it_until_the_exit() -> None:
    deps, _ = _deps(_container(state="running", pid=7))
    await exits.oom(deps, "c1")
    stored = deps.store.index.get("c1")
    assert stored is not None and stored.oom_killed and stored.reason == ""


async def test_a_start_error_keeps_its_reason() -> None:
    deps, _ = _deps(_container(state="exited", exit_code=128, reason="StartError"))
    await exits.oom(deps, "c1")
    stored = deps.store.index.get("c1")
    assert stored is not None and stored.reason == "StartError"
