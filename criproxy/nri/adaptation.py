"""The runtime side of NRI: plugins connect to criproxy's socket, register, are told what
runtime this is (Configure), learn every pod and container (Synchronize), and from then on
see, adjust or veto each pod's and container's lifecycle events.

As containerd/nri's adaptation does: events run one at a time, each plugin in index order
with `plugin_request_timeout` to answer; a plugin whose connection goes, or that does not
answer in time, is dropped and the CRI call goes on without it; a plugin that answers with
an error fails the CRI call. A plugin that connects while containers are being made is
synchronised only once those are made, and any container made after its snapshot reaches
it as an event: no container is lost to a late plugin.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import grpc
import structlog

from criproxy import metrics, tracing
from criproxy._generated.nri import api_pb2 as nri
from criproxy.nri import launch, linux, mux, ttrpc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from anyio.abc import SocketListener, SocketStream, TaskGroup
    from google.protobuf.message import Message

    from criproxy.config import NriSection

log = structlog.get_logger("criproxy.nri")

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
NRI_VERSION = "v0.12.1"
"""The protocol version criproxy speaks (the API of containerd/nri v0.12.1)."""
VALID_EVENTS = (1 << (nri.LAST - 1)) - 1
SYNC_TIMEOUT = 30.0
"""How long a plugin has for Synchronize: a plugin may hold it while it sets itself up."""
_NAME = re.compile(r"^[a-zA-Z0-9_.+-]+$")
_INDEX = re.compile(r"^[0-9][0-9]$")

R = TypeVar("R", bound="Message")


class PluginError(Exception):
    """A plugin refused an event: the CRI call fails with this."""

    def __init__(self, plugin: str, event: str, message: str) -> None:
        super().__init__(f"NRI plugin {plugin} failed {event}: {message}")
        self.plugin = plugin


def event_bit(event: int) -> int:
    return 1 << (event - 1)


@dataclass
class Plugin:
    """One connected plugin: its registration, its subscription, its connection."""

    mux: mux.Mux
    client: ttrpc.Client
    launched: launch.Launched | None = None
    """Set for a pre-installed plugin criproxy started."""
    name: str = ""
    index: str = ""
    events: int = 0
    registered: anyio.Event = field(default_factory=anyio.Event)
    problem: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.index}-{self.name}" if self.index else self.name or "(unregistered)"

    def wants(self, event: int) -> bool:
        return bool(self.events & event_bit(event))


class _SyncBarrier:
    """Container changes hold it shared; a plugin's synchronisation holds it alone, so a
    container is either in the plugin's snapshot or made once the plugin gets events."""

    def __init__(self) -> None:
        self._changes = 0
        self._syncing = False
        self._cond = anyio.Condition()

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        async with self._cond:
            while self._syncing:
                await self._cond.wait()
            self._changes += 1
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._changes -= 1
                    self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def sync(self) -> AsyncIterator[None]:
        async with self._cond:
            while self._syncing:
                await self._cond.wait()
            self._syncing = True  # from now on changes wait: a busy node cannot starve it
            try:
                while self._changes:
                    await self._cond.wait()
            except BaseException:
                self._syncing = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._syncing = False
                    self._cond.notify_all()


class Nri:
    """The plugins and the socket they connect to."""

    def __init__(
        self,
        config: NriSection,
        runtime_version: str,
        snapshot: Callable[[], tuple[list[nri.PodSandbox], list[nri.Container]]],
    ) -> None:
        self.config = config
        self.runtime_version = runtime_version
        self._snapshot = snapshot
        self.plugins: list[Plugin] = []
        self._events = anyio.Lock()
        self.barrier = _SyncBarrier()
        self.updater: Callable[[str, nri.LinuxResources], Awaitable[None]] | None = None
        """Applies a plugin's update of a container's resources (the container service)."""
        self.recovered: Callable[[], Awaitable[None]] | None = None
        """Waits until criproxy knows its pods again (a plugin is synchronised after)."""
        self.evictor: Callable[[str, str], Awaitable[None]] | None = None
        """Stops a container a plugin evicts (the container service)."""

    @property
    def enabled(self) -> bool:
        return not self.config.disable

    # --- connections -------------------------------------------------------------

    async def serve(self, tg: TaskGroup) -> None:
        """Listen on the socket (unless connections are off) and start the pre-installed
        plugins, in `tg`."""
        if not self.enabled:
            return
        if not self.config.disable_connections:
            path = Path(self.config.socket_path)
            await anyio.to_thread.run_sync(_prepare_socket, path)
            listener = await anyio.create_unix_listener(path, mode=0o600)
            log.info("NRI socket listening", socket=str(path))
            tg.start_soon(self._accept, listener, tg)
        tg.start_soon(self._launch_installed, tg)

    async def _accept(self, listener: SocketListener, tg: TaskGroup) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                tg.start_soon(self._connected, stream)

    async def _launch_installed(self, tg: TaskGroup) -> None:
        try:
            installed, refused = await anyio.to_thread.run_sync(
                launch.discover, self.config.plugin_path, self.config.plugin_config_path
            )
        except OSError as err:
            log.error("NRI pre-installed plugins not started", error=str(err))
            return
        for problem in refused:
            log.error("NRI pre-installed plugin not started", error=problem)
        for plugin in installed:
            try:
                started = await anyio.to_thread.run_sync(launch.launch, plugin)
            except OSError as err:
                log.warning(
                    "NRI pre-installed plugin not started", path=str(plugin.path), error=str(err)
                )
                continue
            log.info("NRI pre-installed plugin started", path=str(plugin.path), pid=started.pid)
            stream = await anyio.abc.UNIXSocketStream.from_socket(started.conn)
            tg.start_soon(self._relay_output, started)
            tg.start_soon(self._connected, stream, started)

    async def _relay_output(self, started: launch.Launched) -> None:
        """A pre-installed plugin's output into criproxy's log, line by line."""
        name = f"{started.plugin.index}-{started.plugin.name}"
        fd, pending = started.output, b""
        os.set_blocking(fd, False)  # read when the loop says readable: no thread held
        try:
            while True:
                await anyio.wait_readable(fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop() if chunk else b""
                for line in filter(None, lines):
                    text = line.decode(errors="replace").rstrip()
                    log.info("NRI plugin output", plugin=name, output=text)
                if not chunk:
                    return
        finally:
            anyio.notify_closing(fd)
            os.close(fd)

    async def _connected(
        self, stream: SocketStream, started: launch.Launched | None = None
    ) -> None:
        m = mux.Mux(stream)
        plugin = Plugin(m, ttrpc.Client(m.open(mux.PLUGIN_SERVICE_CONN)), started)
        server = ttrpc.Server(
            m.open(mux.RUNTIME_SERVICE_CONN),
            {
                (RUNTIME_SERVICE, "RegisterPlugin"): lambda b: self._register(plugin, b),
                (RUNTIME_SERVICE, "UpdateContainers"): self._update_containers,
            },
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(m.run)
                tg.start_soon(plugin.client.run)
                tg.start_soon(server.run)
                try:
                    await self._start(plugin)
                except Exception as err:
                    log.warning("NRI plugin not started", plugin=plugin.qualified, error=str(err))
                    await m.aclose()
                    return
                await m.done.wait()
                tg.cancel_scope.cancel()
            self._drop(plugin, "its connection closed")
        finally:
            if started is not None:  # a plugin criproxy started goes with its connection
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(launch.stop, started)

    async def _register(self, plugin: Plugin, payload: bytes) -> bytes:
        request = nri.RegisterPluginRequest.FromString(payload)
        problem = ""
        if not _NAME.match(request.plugin_name):
            problem = f"invalid plugin name {request.plugin_name!r}"
        elif not _INDEX.match(request.plugin_idx):
            problem = f"invalid plugin index {request.plugin_idx!r}, must be 2 digits"
        if problem:
            plugin.problem = problem
            plugin.registered.set()
            raise ttrpc.TtrpcError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        plugin.name, plugin.index = request.plugin_name, request.plugin_idx
        log.info(
            "NRI plugin registered",
            plugin=plugin.qualified,
            nri_version=request.NRI_version or "unknown",
        )
        plugin.registered.set()
        return nri.Empty().SerializeToString()

    async def _start(self, plugin: Plugin) -> None:
        """Registration, Configure, Synchronize; then the plugin gets events."""
        with anyio.fail_after(self.config.plugin_registration_timeout):
            await plugin.registered.wait()
        if plugin.problem:
            raise RuntimeError(plugin.problem)
        configured = await plugin.client.call(
            PLUGIN_SERVICE,
            "Configure",
            nri.ConfigureRequest(
                config=plugin.launched.plugin.config if plugin.launched else "",
                runtime_name="criproxy",
                runtime_version=self.runtime_version,
                registration_timeout=int(self.config.plugin_registration_timeout * 1000),
                request_timeout=int(self.config.plugin_request_timeout * 1000),
                NRI_version=NRI_VERSION,
            ),
            nri.ConfigureResponse,
            self.config.plugin_request_timeout,
        )
        events = configured.events or VALID_EVENTS
        if events & ~VALID_EVENTS:
            raise RuntimeError(f"invalid plugin events: {events:#x}")
        plugin.events = events
        if self.recovered is not None:
            await self.recovered()
        async with self.barrier.sync(), self._events:
            pods, containers = self._snapshot()
            answer = await plugin.client.call(
                PLUGIN_SERVICE,
                "Synchronize",
                nri.SynchronizeRequest(pods=pods, containers=containers),
                nri.SynchronizeResponse,
                SYNC_TIMEOUT,
            )
            self.plugins.append(plugin)
            self.plugins.sort(key=lambda p: (p.index, p.name))
        if answer.update:
            await self.apply_updates(answer.update, [])
        log.info(
            "NRI plugin connected and synchronised",
            plugin=plugin.qualified,
            events=f"{events:#x}",
            pods=len(pods),
            containers=len(containers),
        )

    async def _update_containers(self, payload: bytes) -> bytes:
        request = nri.UpdateContainersRequest.FromString(payload)
        failed = await self.apply_updates(request.update, request.evict)
        return nri.UpdateContainersResponse(failed=failed).SerializeToString()

    def _drop(self, plugin: Plugin, why: str) -> None:
        if plugin in self.plugins:
            self.plugins.remove(plugin)
            log.warning("NRI plugin dropped", plugin=plugin.qualified, reason=why)

    # --- events --------------------------------------------------------------------

    async def _each(
        self,
        event: int,
        method: str,
        request: Message,
        reply: type[R],
        on_answer: Callable[[Plugin, R], None] | None = None,
    ) -> None:
        """The event to every subscribed plugin in order; `on_answer(plugin, answer)` right
        after each (it may change `request` for the next plugin, or raise PluginError). A
        plugin that fails by its connection or its deadline is dropped; one that answers an
        error fails the event (PluginError)."""
        if not self.plugins:
            return
        started = time.monotonic()
        try:
            async with self._events:
                for plugin in list(self.plugins):
                    if plugin.wants(event):
                        await self._one(plugin, method, request, reply, on_answer)
        except PluginError:
            metrics.NRI_FAILURES.labels(method, "refused").inc()
            raise
        finally:
            metrics.NRI_LATENCY.labels(method).observe(time.monotonic() - started)

    async def _one(
        self,
        plugin: Plugin,
        method: str,
        request: Message,
        reply: type[R],
        on_answer: Callable[[Plugin, R], None] | None,
    ) -> None:
        try:
            with tracing.client_span(f"nri {method}", plugin=plugin.qualified):
                answer = await plugin.client.call(
                    PLUGIN_SERVICE, method, request, reply, self.config.plugin_request_timeout
                )
        except ttrpc.Closed as err:
            metrics.NRI_FAILURES.labels(method, "disconnected").inc()
            self._drop(plugin, str(err))
            await plugin.mux.aclose()
            return
        except ttrpc.TtrpcError as err:
            if err.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PluginError(plugin.qualified, method, err.message) from None
            metrics.NRI_FAILURES.labels(method, "timeout").inc()
            self._drop(plugin, f"no answer to {method} in time")
            await plugin.mux.aclose()
            return
        if on_answer is not None:
            on_answer(plugin, answer)

    async def run_pod_sandbox(self, pod: nri.PodSandbox) -> None:
        await self._each(
            nri.RUN_POD_SANDBOX,
            "RunPodSandbox",
            nri.RunPodSandboxRequest(pod=pod),
            nri.RunPodSandboxResponse,
        )

    async def stop_pod_sandbox(self, pod: nri.PodSandbox) -> None:
        await self._each(
            nri.STOP_POD_SANDBOX,
            "StopPodSandbox",
            nri.StopPodSandboxRequest(pod=pod),
            nri.StopPodSandboxResponse,
        )

    async def remove_pod_sandbox(self, pod: nri.PodSandbox) -> None:
        await self._each(
            nri.REMOVE_POD_SANDBOX,
            "RemovePodSandbox",
            nri.RemovePodSandboxRequest(pod=pod),
            nri.RemovePodSandboxResponse,
        )

    async def create_container(
        self, pod: nri.PodSandbox, container: nri.Container
    ) -> nri.ContainerAdjustment:
        """Every plugin's adjustment, merged: each plugin sees the container as the ones
        before it left it; two plugins setting the same thing is refused."""
        merged = nri.ContainerAdjustment()
        owners: Owners = {}
        request = nri.CreateContainerRequest(pod=pod, container=container)
        answered: list[Plugin] = []

        def adjusted(plugin: Plugin, answer: nri.CreateContainerResponse) -> None:
            if answer.update or answer.evict:
                raise PluginError(
                    plugin.qualified,
                    "CreateContainer",
                    "asked to update or evict other containers while one is created, which "
                    "criproxy does not do; use UpdateContainers",
                )
            if answer.HasField("adjust") and answer.adjust.ListFields():
                merge(merged, request.container, answer.adjust, plugin.qualified, owners)
                answered.append(plugin)  # the validators' list: the plugins that adjusted

        await self._each(
            nri.CREATE_CONTAINER,
            "CreateContainer",
            request,
            nri.CreateContainerResponse,
            adjusted,
        )
        await self._validate(pod, container, merged, owners, answered)
        return merged

    async def _validate(
        self,
        pod: nri.PodSandbox,
        container: nri.Container,
        merged: nri.ContainerAdjustment,
        owners: Owners,
        answered: list[Plugin],
    ) -> None:
        """The merged adjustment to the validating plugins: any of them may reject it."""
        if not any(p.wants(nri.VALIDATE_CONTAINER_ADJUSTMENT) for p in self.plugins):
            return
        request = nri.ValidateContainerAdjustmentRequest(
            pod=pod,
            container=container,
            adjust=merged,
            owners=owning_plugins(container.id, owners),
            plugins=[nri.PluginInstance(name=p.name, index=p.index) for p in answered],
        )

        def judged(plugin: Plugin, answer: nri.ValidateContainerAdjustmentResponse) -> None:
            if answer.reject:
                raise PluginError(
                    plugin.qualified,
                    "ValidateContainerAdjustment",
                    f"rejected the adjustment: {answer.reason or 'no reason given'}",
                )

        await self._each(
            nri.VALIDATE_CONTAINER_ADJUSTMENT,
            "ValidateContainerAdjustment",
            request,
            nri.ValidateContainerAdjustmentResponse,
            judged,
        )

    async def update_container(
        self, pod: nri.PodSandbox, container: nri.Container, resources: nri.LinuxResources
    ) -> tuple[nri.LinuxResources, list[nri.ContainerUpdate]]:
        """UpdateContainerResources through the plugins: the resources as they leave them
        (each sees the ones before it left them), and what they ask of other containers."""
        owners: Owners = {}
        request = nri.UpdateContainerRequest(pod=pod, container=container)
        request.linux_resources.CopyFrom(resources)
        others: list[nri.ContainerUpdate] = []

        def updated(plugin_: Plugin, answer: nri.UpdateContainerResponse) -> None:
            plugin = plugin_.qualified
            if answer.evict:
                raise PluginError(plugin, "UpdateContainer", "asked to evict containers")
            for update in answer.update:
                if update.container_id != container.id:
                    others.append(update)
                    continue
                wanted = update.linux.resources
                problems = linux.refused_resources(wanted)
                if problems:
                    raise PluginError(
                        plugin,
                        "UpdateContainer",
                        f"adjusts {', '.join(problems)}, which criproxy does not apply",
                    )
                linux.merge_resources(
                    request.linux_resources,
                    wanted,
                    lambda kind, key: _claim(owners, kind, key, plugin, "UpdateContainer"),
                )

        await self._each(
            nri.UPDATE_CONTAINER,
            "UpdateContainer",
            request,
            nri.UpdateContainerResponse,
            updated,
        )
        return request.linux_resources, others

    async def post_update_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            nri.PostUpdateContainerRequest(pod=pod, container=c),
            nri.PostUpdateContainerResponse,
        )

    async def update_pod_sandbox(
        self,
        pod: nri.PodSandbox,
        overhead: nri.LinuxResources | None,
        resources: nri.LinuxResources | None,
    ) -> None:
        request = nri.UpdatePodSandboxRequest(pod=pod)
        if overhead is not None:
            request.overhead_linux_resources.CopyFrom(overhead)
        if resources is not None:
            request.linux_resources.CopyFrom(resources)
        await self._each(
            nri.UPDATE_POD_SANDBOX,
            "UpdatePodSandbox",
            request,
            nri.UpdatePodSandboxResponse,
        )

    async def post_update_pod_sandbox(self, pod: nri.PodSandbox) -> None:
        await self._each(
            nri.POST_UPDATE_POD_SANDBOX,
            "PostUpdatePodSandbox",
            nri.PostUpdatePodSandboxRequest(pod=pod),
            nri.PostUpdatePodSandboxResponse,
        )

    async def apply_updates(
        self, updates: Sequence[nri.ContainerUpdate], evictions: Sequence[nri.ContainerEviction]
    ) -> list[nri.ContainerUpdate]:
        """What plugins ask of containers outside an event of theirs (UpdateContainers, at
        synchronisation, or of other containers in an UpdateContainer answer): each
        update applied as UpdateContainerResources applies limits, each eviction a stop;
        the updates that failed (and may not fail) come back."""
        failed: list[nri.ContainerUpdate] = []
        for update in updates:
            problems = linux.refused_resources(update.linux.resources)
            try:
                if problems:
                    raise ValueError(f"criproxy does not apply {', '.join(problems)}")
                if self.updater is None:
                    raise ValueError("no container service")
                await self.updater(update.container_id, update.linux.resources)
            except Exception as err:
                log.warning(
                    "NRI container update failed",
                    container=update.container_id,
                    error=str(err),
                    ignored=update.ignore_failure,
                )
                if not update.ignore_failure:
                    failed.append(update)
        for eviction in evictions:
            log.info(
                "NRI plugin evicts a container",
                container=eviction.container_id,
                reason=eviction.reason,
            )
            try:
                if self.evictor is None:
                    raise ValueError("no container service")
                await self.evictor(eviction.container_id, eviction.reason)
            except Exception as err:
                log.warning("NRI eviction failed", container=eviction.container_id, error=str(err))
        return failed

    async def post_create_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.POST_CREATE_CONTAINER,
            "PostCreateContainer",
            nri.PostCreateContainerRequest(pod=pod, container=c),
            nri.PostCreateContainerResponse,
        )

    async def start_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.START_CONTAINER,
            "StartContainer",
            nri.StartContainerRequest(pod=pod, container=c),
            nri.StartContainerResponse,
        )

    async def post_start_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.POST_START_CONTAINER,
            "PostStartContainer",
            nri.PostStartContainerRequest(pod=pod, container=c),
            nri.PostStartContainerResponse,
        )

    async def stop_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.STOP_CONTAINER,
            "StopContainer",
            nri.StopContainerRequest(pod=pod, container=c),
            nri.StopContainerResponse,
        )

    async def remove_container(self, pod: nri.PodSandbox, c: nri.Container) -> None:
        await self._each(
            nri.REMOVE_CONTAINER,
            "RemoveContainer",
            nri.RemoveContainerRequest(pod=pod, container=c),
            nri.RemoveContainerResponse,
        )


def _prepare_socket(path: Path) -> None:
    """A 0700 directory for the socket (made if missing), and no stale socket in the way;
    a live one (another runtime's) is never taken over."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover of a runtime that died
        return
    finally:
        probe.close()
    raise OSError(f"another runtime already serves NRI on {path}")


# --- merging adjustments ------------------------------------------------------------------

Owners = dict[tuple[str, str], str]
"""Who set what: (field, key) -> plugin; "-plugin" when that plugin removed it."""


def _claim(
    owners: Owners, kind: str, key: str, plugin: str, event: str = "CreateContainer"
) -> None:
    owner = owners.get((kind, key))
    if owner is not None and owner != f"-{plugin}":
        raise PluginError(
            plugin,
            event,
            f"plugins {plugin!r} and {owner.lstrip('-')!r} both tried to set {kind} {key}".rstrip(),
        )
    owners[kind, key] = plugin


_SIMPLE = {
    ("Args", ""): nri.Args,
    ("OomScoreAdj", ""): nri.OomScoreAdj,
    **{
        ("Memory", name): field
        for name, field in (
            ("limit", nri.MemLimit),
            ("reservation", nri.MemReservation),
            ("swap", nri.MemSwapLimit),
            ("kernel", nri.MemKernelLimit),
            ("kernel_tcp", nri.MemTCPLimit),
            ("swappiness", nri.MemSwappiness),
            ("disable_oom_killer", nri.MemDisableOomKiller),
        )
    },
    **{
        ("Cpu", name): field
        for name, field in (
            ("shares", nri.CPUShares),
            ("quota", nri.CPUQuota),
            ("period", nri.CPUPeriod),
            ("realtime_runtime", nri.CPURealtimeRuntime),
            ("realtime_period", nri.CPURealtimePeriod),
            ("cpus", nri.CPUSetCPUs),
            ("mems", nri.CPUSetMems),
        )
    },
    ("Pids", "limit"): nri.PidsLimit,
}
_COMPOUND = {
    "Annotations": nri.Annotations,
    "Mounts": nri.Mounts,
    "Devices": nri.Devices,
    "CdiDevices": nri.CdiDevices,
    "Env": nri.Env,
    "Rlimits": nri.Rlimits,
    "HugepageLimits": nri.HugepageLimits,
    "Unified": nri.CgroupsUnified,
    "Sysctl": nri.Sysctl,
    "Namespaces": nri.Namespace,
}


def owning_plugins(container_id: str, owners: Owners) -> nri.OwningPlugins:
    """criproxy's record of who set what, as NRI's message (validators read it)."""
    fields = nri.FieldOwners()
    for (kind, key), plugin in owners.items():
        if (kind, key) in _SIMPLE:
            fields.simple[_SIMPLE[kind, key]] = plugin
        elif kind in _COMPOUND:
            fields.compound[_COMPOUND[kind]].owners[key] = plugin
    out = nri.OwningPlugins()
    out.owners[container_id].CopyFrom(fields)
    return out


def _clear(owners: Owners, kind: str, key: str, plugin: str) -> None:
    """A removal of what an earlier plugin set: from now on only this plugin may set it.
    Removing what only the container's own config had claims nothing."""
    if (kind, key) in owners:
        owners[kind, key] = f"-{plugin}"


def merge(
    merged: nri.ContainerAdjustment,
    container: nri.Container,
    adjust: nri.ContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    """One plugin's adjustment into `merged` and into `container` (what the next plugin
    sees). Only what criproxy applies to a spec is accepted; anything else is refused,
    never silently dropped."""
    unsupported = linux.refused(adjust.linux) if adjust.HasField("linux") else []
    if unsupported:
        raise PluginError(
            plugin,
            "CreateContainer",
            f"adjusts {', '.join(unsupported)}, which criproxy does not apply",
        )
    _merge_annotations(merged, container, adjust, plugin, owners)
    for device in adjust.CDI_devices:
        _claim(owners, "CdiDevices", device.name, plugin)
        merged.CDI_devices.append(device)
    _merge_mounts(merged, container, adjust, plugin, owners)
    _merge_env(merged, container, adjust, plugin, owners)
    if adjust.args:
        args = list(adjust.args)
        if args[0] == "":
            _clear(owners, "Args", "", plugin)
            args = args[1:]
        if args:
            _claim(owners, "Args", "", plugin)
            del merged.args[:]
            merged.args.extend(args)
            del container.args[:]
            container.args.extend(args)
    if adjust.HasField("hooks"):  # hooks accumulate: they never conflict
        merged.hooks.MergeFrom(adjust.hooks)
        container.hooks.MergeFrom(adjust.hooks)
    for limit in adjust.rlimits:
        _claim(owners, "Rlimits", limit.type, plugin)
        merged.rlimits.append(limit)
        container.rlimits.append(limit)
    if adjust.HasField("linux"):
        linux.merge_linux(
            merged.linux,
            container.linux,
            adjust.linux,
            lambda kind, key: _claim(owners, kind, key, plugin),
            lambda kind, key: _clear(owners, kind, key, plugin),
        )


def _merge_annotations(
    merged: nri.ContainerAdjustment,
    container: nri.Container,
    adjust: nri.ContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    for key, value in adjust.annotations.items():
        name = key.removeprefix("-")
        if key.startswith("-"):  # a removal: of another plugin's value too
            merged.annotations[key] = ""
            container.annotations.pop(name, None)
            _clear(owners, "Annotations", name, plugin)
            continue
        _claim(owners, "Annotations", name, plugin)
        merged.annotations.pop(f"-{name}", None)
        merged.annotations[name] = value
        container.annotations[name] = value


def _merge_mounts(
    merged: nri.ContainerAdjustment,
    container: nri.Container,
    adjust: nri.ContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    for m in adjust.mounts:
        dest = m.destination.removeprefix("-")
        others = [x for x in merged.mounts if x.destination.removeprefix("-") != dest]
        del merged.mounts[:]
        merged.mounts.extend(others)
        kept = [x for x in container.mounts if x.destination != dest]
        del container.mounts[:]
        container.mounts.extend(kept)
        if m.destination.startswith("-"):
            _clear(owners, "Mounts", dest, plugin)
            merged.mounts.append(m)
            continue
        _claim(owners, "Mounts", dest, plugin)
        merged.mounts.append(m)
        container.mounts.append(m)


def _merge_env(
    merged: nri.ContainerAdjustment,
    container: nri.Container,
    adjust: nri.ContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    for kv in adjust.env:
        name = kv.key.removeprefix("-")
        others = [x for x in merged.env if x.key.removeprefix("-") != name]
        del merged.env[:]
        merged.env.extend(others)
        kept = [e for e in container.env if e.split("=", 1)[0] != name]
        del container.env[:]
        container.env.extend(kept)
        if kv.key.startswith("-"):
            _clear(owners, "Env", name, plugin)
            merged.env.append(kv)
            continue
        _claim(owners, "Env", name, plugin)
        merged.env.append(kv)
        container.env.append(f"{name}={kv.value}")


# --- applying the merged adjustment to an OCI spec ----------------------------------------


def apply(spec: dict[str, Any], adjust: nri.ContainerAdjustment) -> None:
    """The merged adjustment into the container's OCI spec (in place)."""
    annotations = spec.setdefault("annotations", {})
    for key, value in adjust.annotations.items():
        if key.startswith("-"):
            annotations.pop(key[1:], None)
        else:
            annotations[key] = value
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    for m in adjust.mounts:
        dest = m.destination.removeprefix("-")
        mounts[:] = [x for x in mounts if x.get("destination") != dest]
        if not m.destination.startswith("-"):
            entry: dict[str, Any] = {"destination": dest, "type": m.type, "source": m.source}
            if m.options:
                entry["options"] = list(m.options)
            mounts.append(entry)
    process = spec.setdefault("process", {})
    env: list[str] = process.setdefault("env", [])
    for kv in adjust.env:
        name = kv.key.removeprefix("-")
        env[:] = [e for e in env if e.split("=", 1)[0] != name]
        if not kv.key.startswith("-"):
            env.append(f"{name}={kv.value}")
    if adjust.args:
        process["args"] = list(adjust.args)
    if adjust.HasField("hooks"):
        hooks = spec.setdefault("hooks", {})
        for name, oci in (
            ("prestart", "prestart"),
            ("create_runtime", "createRuntime"),
            ("create_container", "createContainer"),
            ("start_container", "startContainer"),
            ("poststart", "poststart"),
            ("poststop", "poststop"),
        ):
            for hook in getattr(adjust.hooks, name):
                entry = {"path": hook.path}
                if hook.args:
                    entry["args"] = list(hook.args)
                if hook.env:
                    entry["env"] = list(hook.env)
                if hook.HasField("timeout"):
                    entry["timeout"] = hook.timeout.value
                hooks.setdefault(oci, []).append(entry)
    if adjust.rlimits:
        rlimits = process.setdefault("rlimits", [])
        for limit in adjust.rlimits:
            rlimits[:] = [r for r in rlimits if r.get("type") != limit.type]
            rlimits.append({"type": limit.type, "hard": limit.hard, "soft": limit.soft})
    if adjust.HasField("linux"):
        linux.apply_linux(spec, adjust.linux)


def container_message(
    container_id: str,
    sandbox_id: str,
    name: str,
    state: int,
    spec: dict[str, Any],
    *,
    labels: Sequence[tuple[str, str]] = (),
    pid: int = 0,
    created_at: int = 0,
    started_at: int = 0,
    finished_at: int = 0,
    exit_code: int = 0,
) -> nri.Container:
    """An NRI Container from criproxy's record of it and its OCI spec."""
    process = spec.get("process") or {}
    linux_spec = spec.get("linux") or {}
    c = nri.Container(
        id=container_id,
        pod_sandbox_id=sandbox_id,
        name=name,
        state=state,  # type: ignore[arg-type]
        labels=dict(labels),
        annotations={str(k): str(v) for k, v in (spec.get("annotations") or {}).items()},
        args=[str(a) for a in process.get("args") or []],
        env=[str(e) for e in process.get("env") or []],
        pid=pid,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=exit_code,
    )
    for m in spec.get("mounts") or []:
        c.mounts.append(
            nri.Mount(
                destination=str(m.get("destination", "")),
                type=str(m.get("type", "")),
                source=str(m.get("source", "")),
                options=[str(o) for o in m.get("options") or []],
            )
        )
    for r in process.get("rlimits") or []:
        c.rlimits.append(
            nri.POSIXRlimit(type=str(r["type"]), hard=int(r["hard"]), soft=int(r["soft"]))
        )
    if "oomScoreAdj" in process:
        c.linux.oom_score_adj.value = int(process["oomScoreAdj"])
    for ns in linux_spec.get("namespaces") or []:
        c.linux.namespaces.append(
            nri.LinuxNamespace(type=str(ns.get("type", "")), path=str(ns.get("path", "")))
        )
    if linux_spec.get("cgroupsPath"):
        c.linux.cgroups_path = str(linux_spec["cgroupsPath"])
    if linux_spec.get("resources"):
        c.linux.resources.CopyFrom(linux.from_oci(linux_spec["resources"]))
    return c
