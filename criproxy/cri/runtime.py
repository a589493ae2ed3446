"""runtime.v1.RuntimeService: validate, call one domain service, build the response."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, TypeVar

import anyio
from google.protobuf import json_format

from criproxy import __version__
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert import container as container_cri
from criproxy.cri.convert import metrics as metrics_cri
from criproxy.cri.convert import sandbox as sandbox_cri
from criproxy.cri.convert import stats as stats_cri
from criproxy.cri.convert import streams as streams_cri
from criproxy.cri.convert.encoded import EncodedList
from criproxy.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from criproxy.containers.events import ContainerEvent
    from criproxy.containers.model import Container
    from criproxy.containers.service import ContainerService
    from criproxy.cri.handlers import Context
    from criproxy.node import Node
    from criproxy.sandbox.model import Sandbox
    from criproxy.sandbox.service import SandboxService
    from criproxy.stats import UsageService
    from criproxy.streaming.server import StreamServer

_T = TypeVar("_T")

CRI_VERSION = "0.1.0"
"""The kubelet runtime API version string every CRI runtime reports."""
RUNTIME_NAME = "criproxy"
RUNTIME_API_VERSION = "v1"

_STREAM_BATCH = 256


def _id(record: Container | Sandbox) -> str:
    return record.id


def _batches(items: list[_T]) -> Iterator[list[_T]]:
    """A Stream* rpc's pages: at least one, so an empty result still answers."""
    for start in range(0, max(len(items), 1), _STREAM_BATCH):
        yield items[start : start + _STREAM_BATCH]


_EVENT_TYPES = {
    "created": api_pb2.CONTAINER_CREATED_EVENT,
    "started": api_pb2.CONTAINER_STARTED_EVENT,
    "stopped": api_pb2.CONTAINER_STOPPED_EVENT,
    "deleted": api_pb2.CONTAINER_DELETED_EVENT,
}


def _event_response(event: ContainerEvent) -> api_pb2.ContainerEventResponse:
    return api_pb2.ContainerEventResponse(
        container_id=event.container_id,
        container_event_type=_EVENT_TYPES[event.type],
        created_at=event.created_at_ns,
        pod_sandbox_status=sandbox_cri.to_status(event.sandbox) if event.sandbox else None,
        containers_statuses=[container_cri.to_status(c) for c in event.containers],
    )


_CGROUP_DRIVERS = {"systemd": api_pb2.SYSTEMD, "cgroupfs": api_pb2.CGROUPFS}


class RuntimeServicer:
    """The rpcs of runtime.v1.RuntimeService built so far; the rest answer UNIMPLEMENTED."""

    def __init__(
        self,
        node: Node,
        sandboxes: SandboxService,
        containers: ContainerService,
        usage: UsageService,
        streams: StreamServer,
    ) -> None:
        self._node = node
        self._sandboxes = sandboxes
        self._containers = containers
        self._usage = usage
        self._streams = streams
        self._listed_containers: EncodedList[Container] = EncodedList(
            api_pb2.ListContainersResponse, "containers", container_cri.to_container, _id
        )
        self._listed_pods: EncodedList[Sandbox] = EncodedList(
            api_pb2.ListPodSandboxResponse, "items", sandbox_cri.to_pod_sandbox, _id
        )
        self._container_statuses: EncodedList[Container] = EncodedList(
            api_pb2.ContainerStatusResponse, "status", container_cri.to_status, _id
        )
        self._pod_statuses: EncodedList[Sandbox] = EncodedList(
            api_pb2.PodSandboxStatusResponse, "status", sandbox_cri.to_status, _id
        )

    # --- stats and metrics ------------------------------------------------------------

    async def ContainerStats(  # noqa: N802
        self, request: api_pb2.ContainerStatsRequest, context: Context
    ) -> api_pb2.ContainerStatsResponse:
        container = self._containers.get(request.container_id)
        (usage,) = await self._usage.container_usage([container])
        return api_pb2.ContainerStatsResponse(stats=stats_cri.container_stats(usage))

    async def ListContainerStats(  # noqa: N802
        self, request: api_pb2.ListContainerStatsRequest, context: Context
    ) -> api_pb2.ListContainerStatsResponse:
        items = await self._container_stats(request.filter)
        return api_pb2.ListContainerStatsResponse(stats=items)

    async def StreamContainerStats(  # noqa: N802
        self, request: api_pb2.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        items = await self._container_stats(request.filter)
        for batch in _batches(items):
            yield api_pb2.StreamContainerStatsResponse(container_stats=batch)

    async def _container_stats(
        self, flt: api_pb2.ContainerStatsFilter
    ) -> list[api_pb2.ContainerStats]:
        """As containerd: only running containers have stats in the lists."""
        as_list = api_pb2.ContainerFilter(
            id=flt.id, pod_sandbox_id=flt.pod_sandbox_id, label_selector=flt.label_selector
        )
        running = [c for c in self._containers_matching(as_list) if c.state == "running"]
        return [stats_cri.container_stats(u) for u in await self._usage.container_usage(running)]

    async def PodSandboxStats(  # noqa: N802
        self, request: api_pb2.PodSandboxStatsRequest, context: Context
    ) -> api_pb2.PodSandboxStatsResponse:
        sandbox = self._sandboxes.get(request.pod_sandbox_id)
        (usage,) = await self._usage.pod_usage([sandbox])
        return api_pb2.PodSandboxStatsResponse(stats=stats_cri.pod_sandbox_stats(usage))

    async def ListPodSandboxStats(  # noqa: N802
        self, request: api_pb2.ListPodSandboxStatsRequest, context: Context
    ) -> api_pb2.ListPodSandboxStatsResponse:
        items = await self._pod_stats(request.filter)
        return api_pb2.ListPodSandboxStatsResponse(stats=items)

    async def StreamPodSandboxStats(  # noqa: N802
        self, request: api_pb2.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
        items = await self._pod_stats(request.filter)
        for batch in _batches(items):
            yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    async def _pod_stats(self, flt: api_pb2.PodSandboxStatsFilter) -> list[api_pb2.PodSandboxStats]:
        pods = self._stats_pods(flt)
        return [stats_cri.pod_sandbox_stats(u) for u in await self._usage.pod_usage(pods)]

    def _stats_pods(self, flt: api_pb2.PodSandboxStatsFilter) -> list[Sandbox]:
        """As containerd: the ready pods only."""
        as_list = api_pb2.PodSandboxFilter(id=flt.id, label_selector=flt.label_selector)
        return [s for s in self._pods_matching(as_list) if s.state == "ready"]

    async def ListMetricDescriptors(  # noqa: N802
        self, request: api_pb2.ListMetricDescriptorsRequest, context: Context
    ) -> api_pb2.ListMetricDescriptorsResponse:
        return api_pb2.ListMetricDescriptorsResponse(descriptors=metrics_cri.metric_descriptors())

    async def ListPodSandboxMetrics(  # noqa: N802
        self, request: api_pb2.ListPodSandboxMetricsRequest, context: Context
    ) -> api_pb2.ListPodSandboxMetricsResponse:
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    async def StreamPodSandboxMetrics(  # noqa: N802
        self, request: api_pb2.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
        items = await self._pod_metrics()
        for batch in _batches(items):
            yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)

    async def _pod_metrics(self) -> list[api_pb2.PodSandboxMetrics]:
        """Every ready pod's metrics (the calls take no filter)."""
        pods = self._stats_pods(api_pb2.PodSandboxStatsFilter())
        return [metrics_cri.pod_sandbox_metrics(p) for p in await self._usage.pod_metrics(pods)]

    # --- containers ------------------------------------------------------------------

    async def CreateContainer(  # noqa: N802
        self, request: api_pb2.CreateContainerRequest, context: Context
    ) -> api_pb2.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        config = container_cri.container_config(request.config)
        container_id = await self._containers.create(request.pod_sandbox_id, config)
        return api_pb2.CreateContainerResponse(container_id=container_id)

    async def StartContainer(  # noqa: N802
        self, request: api_pb2.StartContainerRequest, context: Context
    ) -> api_pb2.StartContainerResponse:
        await self._containers.start(request.container_id)
        return api_pb2.StartContainerResponse()

    async def StopContainer(  # noqa: N802
        self, request: api_pb2.StopContainerRequest, context: Context
    ) -> api_pb2.StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout} is negative")
        await self._containers.stop(request.container_id, float(request.timeout))
        return api_pb2.StopContainerResponse()

    async def RemoveContainer(  # noqa: N802
        self, request: api_pb2.RemoveContainerRequest, context: Context
    ) -> api_pb2.RemoveContainerResponse:
        await self._containers.remove(request.container_id)
        return api_pb2.RemoveContainerResponse()

    async def ContainerStatus(  # noqa: N802
        self, request: api_pb2.ContainerStatusRequest, context: Context
    ) -> api_pb2.ContainerStatusResponse | bytes:
        container = self._containers.get(request.container_id)
        if not request.verbose:  # the kubelet's: encoded once per record version
            return self._container_statuses.encode([container])
        runtime_type, options = self._containers.runtime(container)
        info = container_cri.verbose_info(
            container,
            self._containers.spec(container.id),
            runtime_type,
            snapshotter=self._containers.snapshotter,
            runtime_options=options,
        )
        return api_pb2.ContainerStatusResponse(status=container_cri.to_status(container), info=info)

    async def ListContainers(  # noqa: N802
        self, request: api_pb2.ListContainersRequest, context: Context
    ) -> bytes:
        """An encoded ListContainersResponse (see `convert/encoded.py`)."""
        listed = self._containers_matching(request.filter)
        return _encode_listed(
            self._listed_containers, self._container_statuses, listed, request.filter
        )

    async def StreamContainers(  # noqa: N802
        self, request: api_pb2.StreamContainersRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainersResponse]:
        items = self._list_containers(request.filter)
        for batch in _batches(items):
            yield api_pb2.StreamContainersResponse(containers=batch)

    def _list_containers(self, flt: api_pb2.ContainerFilter) -> list[api_pb2.Container]:
        return [container_cri.to_container(c) for c in self._containers_matching(flt)]

    def _containers_matching(self, flt: api_pb2.ContainerFilter) -> list[Container]:
        if not flt.ByteSize():  # no filter: the kubelet's relist, every second
            return self._containers.all()
        try:
            resolved = self._containers.resolve(flt.id) if flt.id else None
        except InvalidArgument:
            return []  # an ambiguous prefix matches nothing, as in containerd
        if flt.id and resolved is None:
            return []
        resolved_id = resolved.id if resolved else ""
        return [c for c in self._containers.all() if container_cri.matches(c, flt, resolved_id)]

    async def UpdateContainerResources(  # noqa: N802
        self, request: api_pb2.UpdateContainerResourcesRequest, context: Context
    ) -> api_pb2.UpdateContainerResourcesResponse:
        if not request.HasField("linux"):
            raise InvalidArgument("linux resources are required")
        resources = container_cri.resources(request.linux, "linux")
        await self._containers.update_resources(request.container_id, resources)
        return api_pb2.UpdateContainerResourcesResponse()

    async def CheckpointContainer(  # noqa: N802
        self, request: api_pb2.CheckpointContainerRequest, context: Context
    ) -> api_pb2.CheckpointContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout} is negative")
        container = self._containers.get(request.container_id)
        await self._containers.checkpoint(
            container.id, request.location, float(request.timeout), _status_json(container)
        )
        return api_pb2.CheckpointContainerResponse()

    async def CheckpointPod(  # noqa: N802
        self, request: api_pb2.CheckpointPodRequest, context: Context
    ) -> api_pb2.CheckpointPodResponse:
        """The call's deadline bounds the checkpoint (the caller must set one)."""
        containers = [self._containers.get(c) for c in request.container_ids]
        statuses = {c.id: _status_json(c) for c in containers}
        ids = [c.id for c in containers]
        remaining = context.time_remaining()
        await self._containers.checkpoint_pod(
            request.pod_sandbox_id,
            output_path=request.output_path,
            container_ids=ids,
            options=dict(request.options),
            timeout=max(remaining - 1.0, 0.001) if remaining is not None else 0.0,
            statuses=statuses,
        )
        return api_pb2.CheckpointPodResponse()

    async def RestorePod(  # noqa: N802
        self, request: api_pb2.RestorePodRequest, context: Context
    ) -> api_pb2.RestorePodResponse:
        """A new pod from `config` with each checkpointed container restored into it,
        CREATED (the caller starts them); on any failure the new pod and its containers go."""
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        if request.options:
            raise InvalidArgument(
                f"options {sorted(request.options)} are not supported: RestorePod takes none here"
            )
        names = [c.metadata.name for c in request.container_configs]
        if not names or not all(names) or len(set(names)) != len(names):
            raise InvalidArgument(
                f"container_configs must name each checkpointed container once, got {names}"
            )
        archives = await self._containers.pod_archives(request.checkpoint_path)
        if set(names) != set(archives):
            raise InvalidArgument(
                f"container_configs name {sorted(names)}; the checkpoint holds {sorted(archives)}"
            )
        configs = [
            dataclasses.replace(container_cri.container_config(c), image=archives[name])
            for c, name in zip(request.container_configs, names, strict=True)
        ]
        pod = sandbox_cri.pod_config(request.config)
        sandbox_id = await self._sandboxes.run_pod(pod, request.runtime_handler)
        restored = []
        try:
            for config in configs:
                container_id = await self._containers.create(sandbox_id, config)
                restored.append(
                    api_pb2.RestoredContainer(name=config.name, container_id=container_id)
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._sandboxes.remove_pod(sandbox_id)
            raise
        return api_pb2.RestorePodResponse(pod_sandbox_id=sandbox_id, restored_containers=restored)

    async def ReopenContainerLog(  # noqa: N802
        self, request: api_pb2.ReopenContainerLogRequest, context: Context
    ) -> api_pb2.ReopenContainerLogResponse:
        await self._containers.reopen_log(request.container_id)
        return api_pb2.ReopenContainerLogResponse()

    async def ExecSync(  # noqa: N802
        self, request: api_pb2.ExecSyncRequest, context: Context
    ) -> api_pb2.ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout} is negative")
        stdout, stderr, code = await self._containers.exec_sync(
            request.container_id, list(request.cmd), float(request.timeout)
        )
        return api_pb2.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=code)

    async def Exec(  # noqa: N802
        self, request: api_pb2.ExecRequest, context: Context
    ) -> api_pb2.ExecResponse:
        exec_request = streams_cri.exec_request(request)
        container = self._containers.running(exec_request.container_id)
        exec_request = dataclasses.replace(exec_request, container_id=container.id)
        return api_pb2.ExecResponse(url=self._streams.url("exec", exec_request))

    async def Attach(  # noqa: N802
        self, request: api_pb2.AttachRequest, context: Context
    ) -> api_pb2.AttachResponse:
        attach_request = streams_cri.attach_request(request)
        container = self._containers.running(attach_request.container_id)
        attach_request = dataclasses.replace(attach_request, container_id=container.id)
        return api_pb2.AttachResponse(url=self._streams.url("attach", attach_request))

    async def PortForward(  # noqa: N802
        self, request: api_pb2.PortForwardRequest, context: Context
    ) -> api_pb2.PortForwardResponse:
        forward = streams_cri.port_forward_request(request)
        sandbox = self._sandboxes.ready(forward.sandbox_id)
        forward = dataclasses.replace(forward, sandbox_id=sandbox.id)
        return api_pb2.PortForwardResponse(url=self._streams.url("portforward", forward))

    async def GetContainerEvents(  # noqa: N802
        self, request: api_pb2.GetEventsRequest, context: Context
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        stream = self._containers.events.subscribe()
        try:
            async for event in stream:
                yield _event_response(event)
        finally:
            self._containers.events.unsubscribe(stream)

    async def RunPodSandbox(  # noqa: N802
        self, request: api_pb2.RunPodSandboxRequest, context: Context
    ) -> api_pb2.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        pod = sandbox_cri.pod_config(request.config)
        sandbox_id = await self._sandboxes.run_pod(pod, request.runtime_handler)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(  # noqa: N802
        self, request: api_pb2.StopPodSandboxRequest, context: Context
    ) -> api_pb2.StopPodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self._sandboxes.stop_pod(request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()

    async def RemovePodSandbox(  # noqa: N802
        self, request: api_pb2.RemovePodSandboxRequest, context: Context
    ) -> api_pb2.RemovePodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self._sandboxes.remove_pod(request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()

    async def PodSandboxStatus(  # noqa: N802
        self, request: api_pb2.PodSandboxStatusRequest, context: Context
    ) -> api_pb2.PodSandboxStatusResponse | bytes:
        sandbox = self._sandboxes.get(request.pod_sandbox_id)
        if not request.verbose:  # the kubelet's: the status encoded once per record version
            stamp = api_pb2.PodSandboxStatusResponse(timestamp=time.time_ns())
            return self._pod_statuses.encode([sandbox]) + stamp.SerializeToString()
        return api_pb2.PodSandboxStatusResponse(
            status=sandbox_cri.to_status(sandbox),
            info=sandbox_cri.verbose_info(sandbox),
            timestamp=time.time_ns(),
        )

    async def ListPodSandbox(  # noqa: N802
        self, request: api_pb2.ListPodSandboxRequest, context: Context
    ) -> bytes:
        """An encoded ListPodSandboxResponse (see `convert/encoded.py`)."""
        listed = self._pods_matching(request.filter)
        return _encode_listed(self._listed_pods, self._pod_statuses, listed, request.filter)

    async def StreamPodSandboxes(  # noqa: N802
        self, request: api_pb2.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
        pods = self._pods(request.filter)
        for batch in _batches(pods):
            yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=batch)

    async def UpdatePodSandboxResources(  # noqa: N802
        self, request: api_pb2.UpdatePodSandboxResourcesRequest, context: Context
    ) -> api_pb2.UpdatePodSandboxResourcesResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self._sandboxes.update_resources(
            request.pod_sandbox_id,
            container_cri.resources(request.overhead, "overhead")
            if request.HasField("overhead")
            else None,
            container_cri.resources(request.resources, "resources")
            if request.HasField("resources")
            else None,
        )
        return api_pb2.UpdatePodSandboxResourcesResponse()

    def _pods(self, flt: api_pb2.PodSandboxFilter) -> list[api_pb2.PodSandbox]:
        return [sandbox_cri.to_pod_sandbox(s) for s in self._pods_matching(flt)]

    def _pods_matching(self, flt: api_pb2.PodSandboxFilter) -> list[Sandbox]:
        if not flt.ByteSize():  # no filter: the kubelet's relist
            return self._sandboxes.pods()
        try:
            resolved = self._sandboxes.resolve(flt.id) if flt.id else None
        except InvalidArgument:
            return []  # an ambiguous prefix matches nothing, as in containerd
        resolved_id = resolved.id if resolved else ""
        return [s for s in self._sandboxes.pods() if sandbox_cri.matches(s, flt, resolved_id)]

    async def Version(  # noqa: N802 (gRPC method names)
        self, request: api_pb2.VersionRequest, context: Context
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(  # noqa: N802
        self, request: api_pb2.StatusRequest, context: Context
    ) -> api_pb2.StatusResponse:
        status = await self._node.status()
        config = self._node.config
        handlers = []
        for name in ["", *sorted(config.runtimes)]:
            features = await self._node.handler_features(name or config.default_runtime_name)
            handlers.append(
                api_pb2.RuntimeHandler(
                    name=name,
                    features=api_pb2.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=features.recursive_read_only_mounts,
                        user_namespaces=features.user_namespaces,
                    ),
                )
            )
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(
                conditions=[
                    api_pb2.RuntimeCondition(
                        type=c.type, status=c.status, reason=c.reason, message=c.message
                    )
                    for c in status.conditions
                ]
            ),
            info=self._node.verbose_info(status) if request.verbose else {},
            runtime_handlers=handlers,
            features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True, mount_options=True),
        )

    async def RuntimeConfig(  # noqa: N802
        self, request: api_pb2.RuntimeConfigRequest, context: Context
    ) -> api_pb2.RuntimeConfigResponse:
        driver = _CGROUP_DRIVERS[self._node.config.cgroup_driver]
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver)
        )

    async def UpdateRuntimeConfig(  # noqa: N802
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Context
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        await self._node.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return api_pb2.UpdateRuntimeConfigResponse()


_Record = TypeVar("_Record", "Container", "Sandbox")


def _encode_listed(
    listing: EncodedList[_Record],
    statuses: EncodedList[_Record],
    records: list[_Record],
    flt: api_pb2.ContainerFilter | api_pb2.PodSandboxFilter,
) -> bytes:
    """A list answer from its cached encodings; an unfiltered list names every record,
    so both caches (the list's and the status calls') forget the removed ones."""
    complete = not flt.ByteSize()
    if complete:
        statuses.retain({r.id for r in records})
    return listing.encode(records, complete=complete)


def _status_json(container: Container) -> bytes:
    """A container's CRI status as a checkpoint archive's status.dump holds it."""
    return json_format.MessageToJson(
        container_cri.to_status(container),
        preserving_proto_field_name=True,
        use_integers_for_enums=True,
    ).encode()
