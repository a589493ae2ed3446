"""The CRI stats and metrics calls: containers', pods', and the cAdvisor-style metrics.

Everything is answered from one metrics sweep per call plus cached layer usage, within
the caller's deadline (see sampler.py); nothing here changes state.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.cgroupfs import read_pod_cgroup
from criproxy.containers import stats
from criproxy.containers.sampler import FS_USAGE_INTERVAL, Sampler
from criproxy.errors import CriproxyError

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from criproxy._generated.cri.runtime.v1 import api_pb2
    from criproxy.containerd import Containerd
    from criproxy.containers.model import Container
    from criproxy.containers.service import ContainerService
    from criproxy.images.service import ImageService
    from criproxy.sandbox.model import Sandbox
    from criproxy.sandbox.service import SandboxService

log = structlog.get_logger("criproxy.containers.usage")

LAYER_WAIT = 1.0
"""How long a call waits for the first measurement of a layer before answering without."""


class UsageService:
    def __init__(
        self,
        containerd: Containerd,
        snapshotter: str,
        images: ImageService,
        sandboxes: SandboxService,
        containers: ContainerService,
        *,
        systemd: bool = False,
    ) -> None:
        self._sampler = Sampler(containerd, snapshotter)
        self._images = images
        self._sandboxes = sandboxes
        self._containers = containers
        self._tg: TaskGroup | None = None
        self._pod_samples: dict[str, stats.CgroupSample] = {}
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

    async def container_stats(self, containers: list[Container]) -> list[api_pb2.ContainerStats]:
        running = [c.id for c in containers if c.state == "running"]
        samples = await self._sampler.sample(running)
        await self._ensure_layers(containers)
        mountpoint = await self._fs_mountpoint()
        return [self._container_stats(c, samples.get(c.id), mountpoint) for c in containers]

    def _container_stats(
        self, c: Container, sample: stats.CgroupSample | None, mountpoint: str
    ) -> api_pb2.ContainerStats:
        layer = self._sampler.layer(c.id)
        return stats.container_stats(
            stats.ContainerAttributes(
                id=c.id,
                name=c.config.name,
                attempt=c.config.attempt,
                labels=c.config.labels,
                annotations=c.config.annotations,
            ),
            sample if c.state == "running" else None,
            usage_nano_cores=self._sampler.nano_cores(c.id) if sample else None,
            writable_layer_bytes=layer.bytes if layer else 0,
            writable_layer_inodes=layer.inodes if layer else 0,
            fs_mountpoint=mountpoint,
            fs_timestamp_ns=layer.timestamp_ns if layer else None,
        )

    # --- pods -----------------------------------------------------------------------

    async def pod_stats(self, pods: list[Sandbox]) -> list[api_pb2.PodSandboxStats]:
        members = self._containers.by_pod([p.id for p in pods])
        ids = [p.id for p in pods if p.state == "ready"]
        ids += [c.id for cs in members.values() for c in cs if c.state == "running"]
        samples = await self._sampler.sample(ids)
        all_containers = [c for cs in members.values() for c in cs]
        await self._ensure_layers(all_containers)
        mountpoint = await self._fs_mountpoint()
        reads = await anyio.to_thread.run_sync(self._host_reads, pods)
        out = []
        for pod in pods:
            containers = members[pod.id]
            container_stats = [
                self._container_stats(c, samples.get(c.id), mountpoint) for c in containers
            ]
            parts = [samples[i] for i in (pod.id, *(c.id for c in containers)) if i in samples]
            own, interfaces = reads[pod.id]
            sample, nano = self._pod_sample(pod, own, parts, containers, samples)
            out.append(
                stats.pod_sandbox_stats(
                    _pod_attributes(pod),
                    sample,
                    usage_nano_cores=nano,
                    containers=container_stats,
                    process_count=sample.pids if sample else 0,
                    interfaces=interfaces,
                )
            )
        return out

    def _host_reads(
        self, pods: list[Sandbox]
    ) -> dict[str, tuple[stats.CgroupSample | None, list[stats.InterfaceStats] | None]]:
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
        own: stats.CgroupSample | None,
        parts: list[stats.CgroupSample],
        containers: list[Container],
        samples: dict[str, stats.CgroupSample],
    ) -> tuple[stats.CgroupSample | None, int | None]:
        """The pod's own cgroup when it has one (limit, monotonic counters, as containerd);
        else the sum of its pause and containers' cgroups."""
        if pod.state != "ready":
            return None, None
        if own is not None:
            previous = self._pod_samples.get(pod.id)
            self._pod_samples[pod.id] = own
            return own, stats.nano_cores(previous, own)
        if not parts:
            return None, None
        nano = sum(
            self._sampler.nano_cores(i)
            for i in (pod.id, *(c.id for c in containers))
            if i in samples
        )
        return _sum(parts), nano

    # --- metrics --------------------------------------------------------------------

    async def pod_metrics(self, pods: list[Sandbox]) -> list[api_pb2.PodSandboxMetrics]:
        members = self._containers.by_pod([p.id for p in pods])
        running = [c.id for cs in members.values() for c in cs if c.state == "running"]
        samples = await self._sampler.sample(running)
        interfaces = await anyio.to_thread.run_sync(
            lambda: {pod.id: _interfaces(pod) for pod in pods}
        )
        out = []
        for pod in pods:
            inputs = []
            for c in members[pod.id]:
                layer = self._sampler.layer(c.id)
                res = c.config.resources
                inputs.append(
                    stats.ContainerMetricsInput(
                        id=c.id,
                        name=c.config.name,
                        image=c.image.name,
                        sample=samples.get(c.id) if c.state == "running" else None,
                        started_at_ns=c.started_at_ns,
                        writable_layer_bytes=layer.bytes if layer else None,
                        cpu_shares=res.cpu_shares if res and res.cpu_shares else None,
                        cpu_period=res.cpu_period if res and res.cpu_period else None,
                        cpu_quota=res.cpu_quota if res and res.cpu_quota else None,
                    )
                )
            meta = pod.config.metadata
            out.append(
                stats.pod_sandbox_metrics(
                    pod.id,
                    meta.name,
                    meta.namespace,
                    interfaces=interfaces[pod.id],
                    containers=inputs,
                )
            )
        return out


def _interfaces(pod: Sandbox) -> list[stats.InterfaceStats] | None:
    """The pod netns's interfaces, from its pause process; None with the host network.
    Blocking."""
    if pod.config.host_network or pod.state != "ready" or not pod.pid:
        return None
    try:
        return stats.read_net_dev(Path(f"/proc/{pod.pid}/net/dev").read_text())
    except OSError:
        return None


def _pod_attributes(pod: Sandbox) -> stats.PodAttributes:
    meta = pod.config.metadata
    return stats.PodAttributes(
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


def _sum(parts: list[stats.CgroupSample]) -> stats.CgroupSample:
    """The pod as the sum of its pause container and its containers (their cgroups are the
    pod's processes); the newest timestamp, no limit of its own."""
    first = parts[0]
    totals = {name: sum(getattr(p, name) for p in parts) for name in _SUMMED}
    return dataclasses.replace(
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
