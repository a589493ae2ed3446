"""runtime.v1.RuntimeService: what the servicer refuses before any domain call, the List
id filters as containerd resolves them, and the event and configuration messages."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from criproxy import __version__
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containers.events import ContainerEvent
from criproxy.containers.model import Container, ImageInfo
from criproxy.cri import RuntimeServicer
from criproxy.cri.convert import container as container_cri
from criproxy.cri.convert import sandbox as sandbox_cri
from criproxy.cri.runtime import _event_response
from criproxy.errors import InvalidArgument
from criproxy.oci.container import ContainerConfig
from criproxy.sandbox.model import PodConfig, PodMetadata, Sandbox

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        (
            "CreateContainer",
            api_pb2.CreateContainerRequest(config=api_pb2.ContainerConfig()),
            "pod_sandbox_id is required",
        ),
        (
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod_sandbox_id="p"),
            "config is required",
        ),
        (
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod_sandbox_id="p", config=api_pb2.ContainerConfig()),
            "config.metadata is required",
        ),
        (
            "StopContainer",
            api_pb2.StopContainerRequest(container_id="c", timeout=-1),
            "timeout -1 is negative",
        ),
        (
            "ExecSync",
            api_pb2.ExecSyncRequest(container_id="c", cmd=["true"], timeout=-5),
            "timeout -5 is negative",
        ),
        (
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(container_id="c"),
            "linux resources are required",
        ),
        (
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(
                container_id="c", linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=-1)
            ),
            "linux.memory_limit_in_bytes -1 is less than 0",
        ),
        ("RunPodSandbox", api_pb2.RunPodSandboxRequest(), "config is required"),
        (
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(config=api_pb2.PodSandboxConfig()),
            "config.metadata is required",
        ),
        ("StopPodSandbox", api_pb2.StopPodSandboxRequest(), "pod_sandbox_id is required"),
        ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(), "pod_sandbox_id is required"),
        (
            "UpdatePodSandboxResources",
            api_pb2.UpdatePodSandboxResourcesRequest(),
            "pod_sandbox_id is required",
        ),
    ],
)
async def test_bad_requests_are_refused_before_the_domain(
    unreachable: Any, method: str, request_: Any, message: str
) -> None:
    servicer = RuntimeServicer(unreachable, unreachable, unreachable, unreachable, unreachable)
    with pytest.raises(InvalidArgument) as err:
        await getattr(servicer, method)(request_, None)
    assert err.value.message == message


async def test_version(unreachable: Any) -> None:
    servicer = RuntimeServicer(unreachable, unreachable, unreachable, unreachable, unreachable)
    assert await servicer.Version(api_pb2.VersionRequest(), None) == api_pb2.VersionResponse(
        version="0.1.0",
        runtime_name="criproxy",
        runtime_version=__version__,
        runtime_api_version="v1",
    )


@pytest.mark.parametrize(
    ("driver", "value"), [("systemd", api_pb2.SYSTEMD), ("cgroupfs", api_pb2.CGROUPFS)]
)
async def test_runtime_config_names_the_cgroup_driver(
    unreachable: Any, driver: str, value: int
) -> None:
    node: Any = SimpleNamespace(config=SimpleNamespace(cgroup_driver=driver))
    servicer = RuntimeServicer(node, unreachable, unreachable, unreachable, unreachable)
    response = await servicer.RuntimeConfig(api_pb2.RuntimeConfigRequest(), None)
    assert response.linux.cgroup_driver == value


# --- List: the id filter resolves as in containerd --------------------------------------


def _sandbox(sandbox_id: str) -> Sandbox:
    return Sandbox(
        id=sandbox_id,
        config=PodConfig(metadata=PodMetadata(sandbox_id, "uid", "ns")),
        runtime_handler="",
        image="pause",
        created_at_ns=1,
        state="ready",
    )


def _container(container_id: str, sandbox_id: str = "aa11") -> Container:
    return Container(
        id=container_id,
        sandbox_id=sandbox_id,
        config=ContainerConfig(name=container_id),
        image=ImageInfo("sha256:x", "sha256:x", "busybox"),
        created_at_ns=1,
    )


class Records:
    """The lookups the List calls use: full id or unique prefix; an ambiguous one refused."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def resolve(self, prefix: str) -> Any:
        found = [i for i in self.items if i.id.startswith(prefix)]
        if len(found) > 1:
            raise InvalidArgument(f"{prefix!r} is ambiguous")
        return found[0] if found else None

    def pods(self) -> list[Any]:
        return self.items

    def get(self, record_id: str) -> Any:
        return next(i for i in self.items if i.id == record_id)

    def all(self) -> list[Any]:
        return self.items


@pytest.mark.parametrize(
    ("prefix", "listed"),
    [("", ["aa11", "aa22", "bb33"]), ("aa1", ["aa11"]), ("bb33", ["bb33"]), ("aa", []), ("c", [])],
)
async def test_list_pod_sandbox_by_id_prefix(
    unreachable: Any, prefix: str, listed: list[str]
) -> None:
    sandboxes: Any = Records([_sandbox(i) for i in ("aa11", "aa22", "bb33")])
    servicer = RuntimeServicer(unreachable, sandboxes, unreachable, unreachable, unreachable)
    request = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=prefix))
    response = api_pb2.ListPodSandboxResponse.FromString(
        await servicer.ListPodSandbox(request, None)
    )
    assert [s.id for s in response.items] == listed


@pytest.mark.parametrize(
    ("prefix", "pod", "listed"),
    [
        ("", "", ["c1", "c2", "d3"]),
        ("c1", "", ["c1"]),
        ("c", "", []),  # ambiguous
        ("x", "", []),  # unknown
        ("", "aa", ["c1", "c2"]),
        ("d", "aa", []),
    ],
)
async def test_list_containers_by_id_prefix_and_pod(
    unreachable: Any, prefix: str, pod: str, listed: list[str]
) -> None:
    containers: Any = Records(
        [_container("c1"), _container("c2"), _container("d3", sandbox_id="bb33")]
    )
    servicer = RuntimeServicer(unreachable, unreachable, containers, unreachable, unreachable)
    request = api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(id=prefix, pod_sandbox_id=pod)
    )
    response = api_pb2.ListContainersResponse.FromString(
        await servicer.ListContainers(request, None)
    )
    assert [c.id for c in response.containers] == listed


async def test_statuses_are_the_messages_the_records_make_and_follow_their_changes(
    unreachable: Any,
) -> None:
    containers: Any = Records([_container("c1")])
    sandboxes: Any = Records([_sandbox("aa11")])
    servicer = RuntimeServicer(unreachable, sandboxes, containers, unreachable, unreachable)

    async def container_status() -> api_pb2.ContainerStatusResponse:
        raw = await servicer.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id="c1"), None
        )
        assert isinstance(raw, bytes)
        return api_pb2.ContainerStatusResponse.FromString(raw)

    assert (await container_status()).status == container_cri.to_status(containers.items[0])
    containers.items[0] = containers.items[0].with_changes(state="running", pid=7)
    assert (await container_status()).status.state == api_pb2.CONTAINER_RUNNING

    request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id="aa11")
    raw = await servicer.PodSandboxStatus(request, None)
    assert isinstance(raw, bytes)
    response = api_pb2.PodSandboxStatusResponse.FromString(raw)
    assert response.status == sandbox_cri.to_status(sandboxes.items[0])
    assert response.timestamp > 0 and not response.info


# --- events -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("created", api_pb2.CONTAINER_CREATED_EVENT),
        ("started", api_pb2.CONTAINER_STARTED_EVENT),
        ("stopped", api_pb2.CONTAINER_STOPPED_EVENT),
        ("deleted", api_pb2.CONTAINER_DELETED_EVENT),
    ],
)
def test_each_event_type_converts(kind: str, value: int) -> None:
    sandbox, others = _sandbox("aa11"), (_container("c2"),)
    event = ContainerEvent(kind, "c1", 99, sandbox, others)
    assert _event_response(event) == api_pb2.ContainerEventResponse(
        container_id="c1",
        container_event_type=value,
        created_at=99,
        pod_sandbox_status=sandbox_cri.to_status(sandbox),
        containers_statuses=[container_cri.to_status(c) for c in others],
    )


def test_an_event_without_its_pod_has_no_pod_status() -> None:
    response = _event_response(ContainerEvent("deleted", "c1", 5, None, ()))
    assert not response.HasField("pod_sandbox_status")
    assert list(response.containers_statuses) == []
