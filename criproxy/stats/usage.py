"""The CRI stats and metrics calls' figures: containers', pods', and the metrics' inputs.

Everything is answered from one metrics sweep per call plus cached layer usage, within
the caller's deadline (see sampler.py); nothing here changes state. The answers are
this module's dataclasses; `criproxy/cri/convert/` turns them into CRI messages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog

from criproxy.errors import CriproxyError
from criproxy.stats.cgroupfs import (
    ProcessCounts,
    accounting_dirs,
    process_cgroup,
    process_counts,
    read_pod_cgroup,
)
from criproxy.stats.sample import CgroupSample, InterfaceStats, nano_cores, read_net_dev
from criproxy.stats.sampler import FS_USAGE_INTERVAL, Sampler

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from anyio.abc import TaskGroup

    from criproxy.containerd import Containerd
    from criproxy.containers.model import Container
    from criproxy.images.service import ImageService
    from criproxy.sandbox.model import Sandbox

__all__ = [
    "ContainerAttributes",
    "ContainerIndex",
    "ContainerMetricsInput",
    "ContainerUsage",
    "FsCapacity",
    "PodAttributes",
    "PodIndex",
    "PodMetricsInput",
    "PodUsage",
    "UsageService",
]

log = structlog.get_logger("criproxy.stats.usage")

LAYER_WAIT = 1.0
"""How long a call waits for the first measurement of a layer before answering without."""


@dataclass(frozen=True)
class ContainerAttributes:
    """What CRI's ContainerAttributes carries, from criproxy's own container record."""

    id: str
    name: str
    attempt: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodAttributes:
    """What CRI's PodSandboxAttributes carries, from criproxy's own sandbox record."""

    id: str
    name: str
    uid: str
    namespace: str
    attempt: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerUsage:
    """One container's ContainerStats figures.

    Without a sample (no task) only the attributes and the writable layer are reported,
    as containerd answers for a created or exited container. `nano_cores` None leaves
    CRI's field unset. `fs_mountpoint` is the image filesystem the writable layer lives
    on (ImageFsInfo's mountpoint), which the kubelet matches the two by; the layer's
    timestamp None means the sample's.
    """

    attributes: ContainerAttributes
    sample: CgroupSample | None
    nano_cores: int | None
    writable_layer_bytes: int
    writable_layer_inodes: int
    fs_mountpoint: str
    fs_timestamp_ns: int | None = None


@dataclass(frozen=True)
class PodUsage:
    """One pod's PodSandboxStats figures: the pod cgroup's CPU and memory, network,
    processes, its containers.

    `process_count` is the sum of the containers' `pids` (containerd counts the pod's
    processes so, leaving the pause process out). `interfaces` is None for a pod on the
    host network, which has no network stats of its own. `timestamp_ns` stamps the
    network and process figures; None means the sample's time, else now.
    """

    attributes: PodAttributes
    sample: CgroupSample | None
    nano_cores: int | None
    containers: tuple[ContainerUsage, ...]
    process_count: int
    interfaces: tuple[InterfaceStats, ...] | None
    timestamp_ns: int | None = None


@dataclass(frozen=True)
class FsCapacity:
    """The image filesystem (where writable layers live) as statvfs sees it."""

    device: str
    limit_bytes: int
    inodes_total: int
    inodes_free: int


@dataclass(frozen=True)
class ContainerMetricsInput:
    """One container's inputs to ListPodSandboxMetrics, gathered from its record and task."""

    id: str
    name: str
    image: str
    """The image as the user asked for it (containerd's `UserSpecifiedImage`)."""
    sample: CgroupSample | None
    """None when the container has no task: then only record-derived metrics are sent."""
    started_at_ns: int = 0
    writable_layer_bytes: int | None = None
    fs_device: str = ""
    """The `device` label of container_fs_usage_bytes: the image filesystem's mountpoint."""
    cpu_shares: int | None = None
    cpu_period: int | None = None
    cpu_quota: int | None = None
    memory_reservation_bytes: int | None = None
    """From the OCI spec's Linux resources; None when not set (the metric is then omitted)."""
    memory_swap_limit_bytes: int | None = None
    """Memory plus swap as the request limits it (0: unlimited; None: no resources set)."""
    processes: ProcessCounts | None = None
    """Open files and sockets of a running container's processes."""
    fs: FsCapacity | None = None


@dataclass(frozen=True)
class PodMetricsInput:
    """One pod's inputs to ListPodSandboxMetrics: network at pod level, the rest per
    container. `interfaces` None (host network) sends no network series; `timestamp_ns`
    stamps the pod-level metrics, None meaning now."""

    sandbox_id: str
    pod_name: str
    namespace: str
    interfaces: tuple[InterfaceStats, ...] | None
    containers: tuple[ContainerMetricsInput, ...]
    timestamp_ns: int | None = None


class PodIndex(Protocol):
    """The pods UsageService reports on (the sandbox service or its store)."""

    def pods_if_ready(self) -> Iterable[Sandbox]: ...


class ContainerIndex(Protocol):
    """The containers UsageService reports on, and each pod's members."""

    def all_if_ready(self) -> Iterable[Container]: ...

    def by_pod(self, sandbox_ids: list[str]) -> Mapping[str, Sequence[Container]]: ...


class UsageService:
    """Samples containers and pods for the stats and metrics calls; owns the background
    refresh of writable-layer usage (`run`)."""

    def __init__(
        self,
        containerd: Containerd,
        snapshotter: str,
        images: ImageService,
        sandboxes: PodIndex,
        containers: ContainerIndex,
        *,
        systemd: bool = False,
    ) -> None:
        self._sampler = Sampler(containerd, snapshotter)
        self._images = images
        self._sandboxes = sandboxes
        self._containers = containers
        self._tg: TaskGroup | None = None
        self._pod_samples: dict[str, CgroupSample] = {}
        self._systemd = systemd
        self._layers_done = anyio.Event()

    async def run(self) -> None:
        """Keeps writable-layer usage fresh in the background; runs until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                await self._refresh_layers()
                await anyio.sleep(FS_USAGE_INTERVAL)

    async def _refresh_layers(self) -> None:
        ids = [c.id for c in self._containers.all_if_ready()]
        pods = {p.id for p in self._sandboxes.pods_if_ready()}
        self._sampler.retain([*ids, *pods])
        for gone in [i for i in self._pod_samples if i not in pods]:
            del self._pod_samples[gone]
        try:
            await self._sampler.refresh_layers(ids)
        finally:
            done, self._layers_done = self._layers_done, anyio.Event()
            done.set()

    async def _fs_mountpoint(self) -> str:
        """The snapshotter's root (cached by the image filesystem); "" when unknown."""
        try:
            return await self._images.filesystem.mountpoint()
        except CriproxyError:
            return ""

    async def _ensure_layers(self, containers: list[Container]) -> None:
        if all(self._sampler.layer(c.id) is not None for c in containers):
            return
        if self._tg is not None:
            self._tg.start_soon(self._refresh_layers)
            with anyio.move_on_after(LAYER_WAIT):
                await self._layers_done.wait()

    # --- containers -----------------------------------------------------------------

    async def container_usage(self, containers: list[Container]) -> list[ContainerUsage]:
        running = {c.id: c.pid for c in containers if c.state == "running"}
        samples = await self._sampler.sample(running)
        await self._ensure_layers(containers)
        mountpoint = await self._fs_mountpoint()
        return [self._container_usage(c, samples.get(c.id), mountpoint) for c in containers]

    def _container_usage(
        self, c: Container, sample: CgroupSample | None, mountpoint: str
    ) -> ContainerUsage:
        layer = self._sampler.layer(c.id)
        return ContainerUsage(
            ContainerAttributes(
                id=c.id,
                name=c.config.name,
                attempt=c.config.attempt,
                labels=c.config.labels,
                annotations=c.config.annotations,
            ),
            sample if c.state == "running" else None,
            nano_cores=self._sampler.nano_cores(c.id) if sample else None,
            writable_layer_bytes=layer.bytes if layer else 0,
            writable_layer_inodes=layer.inodes if layer else 0,
            fs_mountpoint=mountpoint,
            fs_timestamp_ns=layer.timestamp_ns if layer else None,
        )

    # --- pods -----------------------------------------------------------------------

    async def pod_usage(self, pods: list[Sandbox]) -> list[PodUsage]:
        members = self._containers.by_pod([p.id for p in pods])
        tasks = {p.id: p.pid for p in pods if p.state == "ready"}
        tasks |= {c.id: c.pid for cs in members.values() for c in cs if c.state == "running"}
        samples = await self._sampler.sample(tasks)
        all_containers = [c for cs in members.values() for c in cs]
        await self._ensure_layers(all_containers)
        mountpoint = await self._fs_mountpoint()
        reads = await anyio.to_thread.run_sync(self._host_reads, pods)
        out = []
        for pod in pods:
            containers = members[pod.id]
            parts = [samples[i] for i in (pod.id, *(c.id for c in containers)) if i in samples]
            own, interfaces = reads[pod.id]
            sample, nano = self._pod_sample(pod, own, parts, containers, samples)
            out.append(
                PodUsage(
                    _pod_attributes(pod),
                    sample,
                    nano_cores=nano,
                    containers=tuple(
                        self._container_usage(c, samples.get(c.id), mountpoint) for c in containers
                    ),
                    process_count=sample.pids if sample else 0,
                    interfaces=interfaces,
                )
            )
        return out

    def _host_reads(
        self, pods: list[Sandbox]
    ) -> dict[str, tuple[CgroupSample | None, tuple[InterfaceStats, ...] | None]]:
        """Each pod's own cgroup and its netns's interfaces, read in one worker-thread hop
        for all of them (a /proc or cgroupfs read must not stall the event loop). Blocking."""
        return {
            pod.id: (
                read_pod_cgroup(pod.config.cgroup_parent, self._systemd)
                if pod.state == "ready"
                else None,
                _interfaces(pod),
            )
            for pod in pods
        }

    def _pod_sample(
        self,
        pod: Sandbox,
        own: CgroupSample | None,
        parts: list[CgroupSample],
        containers: Sequence[Container],
        samples: dict[str, CgroupSample],
    ) -> tuple[CgroupSample | None, int | None]:
        """The pod's own cgroup when it has one (limit, monotonic counters, as containerd);
        else the sum of its pause and containers' cgroups."""
        if pod.state != "ready":
            return None, None
        if own is not None:
            previous = self._pod_samples.get(pod.id)
            self._pod_samples[pod.id] = own
            return own, nano_cores(previous, own)
        if not parts:
            return None, None
        nano = sum(
            self._sampler.nano_cores(i)
            for i in (pod.id, *(c.id for c in containers))
            if i in samples
        )
        return _sum(parts), nano

    # --- metrics --------------------------------------------------------------------

    async def pod_metrics(self, pods: list[Sandbox]) -> list[PodMetricsInput]:
        members = self._containers.by_pod([p.id for p in pods])
        running = {c.id: c.pid for cs in members.values() for c in cs if c.state == "running"}
        samples = await self._sampler.sample(running)
        await self._ensure_layers([c for cs in members.values() for c in cs])
        mountpoint = await self._fs_mountpoint()

        def host_reads() -> tuple[
            dict[str, tuple[InterfaceStats, ...] | None],
            dict[str, ProcessCounts],
            FsCapacity | None,
        ]:
            return (
                {pod.id: _interfaces(pod) for pod in pods},
                _process_counts(running),
                _fs_capacity(mountpoint),
            )

        interfaces, counts, fs = await anyio.to_thread.run_sync(host_reads)
        out = []
        for pod in pods:
            inputs = []
            for c in members[pod.id]:
                layer = self._sampler.layer(c.id)
                res = c.config.resources
                inputs.append(
                    ContainerMetricsInput(
                        id=c.id,
                        name=c.config.name,
                        image=c.image.name,
                        sample=samples.get(c.id) if c.state == "running" else None,
                        started_at_ns=c.started_at_ns,
                        writable_layer_bytes=layer.bytes if layer else None,
                        fs_device=mountpoint,
                        cpu_shares=res.cpu_shares if res and res.cpu_shares else None,
                        cpu_period=res.cpu_period if res and res.cpu_period else None,
                        cpu_quota=res.cpu_quota if res and res.cpu_quota else None,
                        memory_swap_limit_bytes=res.memory_swap_limit_in_bytes if res else None,
                        processes=counts.get(c.id) if c.state == "running" else None,
                        fs=fs,
                    )
                )
            meta = pod.config.metadata
            out.append(
                PodMetricsInput(
                    pod.id,
                    meta.name,
                    meta.namespace,
                    interfaces=interfaces[pod.id],
                    containers=tuple(inputs),
                )
            )
        return out


def _process_counts(running: Mapping[str, int]) -> dict[str, ProcessCounts]:
    """Open files and sockets per running container, through its cgroup. Blocking."""
    out = {}
    for container_id, pid in running.items():
        dirs = process_cgroup(pid) if pid > 0 else None
        # the cgroup must be the container's own: a pid read late may be another's by now
        if not dirs or not all(container_id in str(d) for d in accounting_dirs(dirs)):
            continue
        counts = process_counts(dirs)
        if counts is not None:
            out[container_id] = counts
    return out


def _fs_capacity(mountpoint: str) -> FsCapacity | None:
    if not mountpoint:
        return None
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    return FsCapacity(mountpoint, st.f_blocks * st.f_frsize, st.f_files, st.f_ffree)


def _interfaces(pod: Sandbox) -> tuple[InterfaceStats, ...] | None:
    """The pod netns's interfaces, from its pause process; None with the host network.
    Blocking."""
    if pod.config.host_network or pod.state != "ready" or not pod.pid:
        return None
    try:
        return tuple(read_net_dev(Path(f"/proc/{pod.pid}/net/dev").read_text()))
    except OSError:
        return None


def _pod_attributes(pod: Sandbox) -> PodAttributes:
    meta = pod.config.metadata
    return PodAttributes(
        id=pod.id,
        name=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        attempt=meta.attempt,
        labels=pod.config.labels,
        annotations=pod.config.annotations,
    )


_SUMMED = (
    "cpu_usage_ns",
    "cpu_user_ns",
    "cpu_system_ns",
    "memory_usage_bytes",
    "memory_working_set_bytes",
    "rss_bytes",
    "cache_bytes",
    "mapped_file_bytes",
    "active_file_bytes",
    "inactive_file_bytes",
    "page_faults",
    "major_page_faults",
    "container_page_faults",
    "container_major_page_faults",
    "oom_kills",
    "pids",
)


def _sum(parts: list[CgroupSample]) -> CgroupSample:
    """The pod as the sum of its pause container and its containers (their cgroups are the
    pod's processes); the newest timestamp, no limit of its own."""
    first = parts[0]
    totals = {name: sum(getattr(p, name) for p in parts) for name in _SUMMED}
    return replace(
        first,
        timestamp_ns=max(p.timestamp_ns for p in parts) or time.time_ns(),
        has_cpu=any(p.has_cpu for p in parts),
        has_memory=any(p.has_memory for p in parts),
        memory_limit_bytes=None,
        available_bytes=0,
        swap_usage_bytes=None,
        swap_limit_bytes=None,
        block_io=(),
        **totals,
    )
