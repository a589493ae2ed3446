"""The container calls, one module each (create, start, stop, remove, exits, exec, logs,
resources), over the container store and the pod loops; this facade is what the CRI
servicer, the stats and the server see.

Every state change of a container runs in its pod's loop, so an exit event and a
RemoveContainer never race; StopContainer waits outside the loop for the exit the loop
records.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import anyio

from criproxy.containers import (
    attach,
    checkpoint,
    checkpoint_pod,
    create,
    exec,
    exits,
    logs,
    remove,
    resources,
    start,
    stop,
)
from criproxy.containers.deps import ContainerDeps, ContainerPaths
from criproxy.sandbox.handlers import resolve_handler, runc_options

if TYPE_CHECKING:
    from collections.abc import Mapping

    from criproxy._generated.nri import api_pb2 as nri
    from criproxy.config import Config
    from criproxy.containerd import Containerd, Event
    from criproxy.containers.events import EventHub
    from criproxy.containers.model import Container
    from criproxy.containers.streams import AttachRequest, ExecRequest, SessionStreams
    from criproxy.images.service import ImageService
    from criproxy.oci.container import ContainerConfig, ContainerResources
    from criproxy.sandbox.service import SandboxService
    from criproxy.store import ContainerStore


class ContainerService:
    def __init__(
        self,
        config: Config,
        containerd: Containerd,
        images: ImageService,
        sandboxes: SandboxService,
        store: ContainerStore,
    ) -> None:
        self.deps = ContainerDeps(
            config=config,
            containerd=containerd,
            images=images,
            pods=sandboxes.deps,
            store=store,
            paths=ContainerPaths.of(config),
        )
        self.store = store
        sandboxes.before_stop(functools.partial(stop.stop_pod_containers, self.deps))
        sandboxes.before_remove(functools.partial(remove.remove_pod_containers, self.deps))

    async def run(self) -> None:
        """Owns the containers' IO pumps; runs until cancelled (server shutdown)."""
        await self.deps.run()

    @property
    def events(self) -> EventHub:
        return self.deps.events

    # --- calls --------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        return await create.create(self.deps, sandbox_id, config)

    async def start(self, container_id: str) -> None:
        await start.start(self.deps, container_id)

    async def stop(self, container_id: str, timeout: float) -> None:
        await stop.stop(self.deps, container_id, timeout)

    async def remove(self, container_id: str) -> None:
        await remove.remove(self.deps, container_id)

    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout: float
    ) -> tuple[bytes, bytes, int]:
        return await exec.exec_sync(self.deps, container_id, cmd, timeout)

    async def exec_session(self, request: ExecRequest, streams: SessionStreams) -> int:
        return await exec.exec_session(self.deps, request, streams)

    async def attach_session(self, request: AttachRequest, streams: SessionStreams) -> int:
        return await attach.attach_session(self.deps, request, streams)

    async def checkpoint(
        self, container_id: str, location: str, timeout: float, status_json: bytes
    ) -> None:
        await checkpoint.checkpoint(self.deps, container_id, location, timeout, status_json)

    async def checkpoint_pod(
        self,
        sandbox_id: str,
        *,
        output_path: str,
        container_ids: list[str],
        options: Mapping[str, str],
        timeout: float,
        statuses: Mapping[str, bytes],
    ) -> None:
        await checkpoint_pod.checkpoint_pod(
            self.deps,
            sandbox_id,
            output_path=output_path,
            container_ids=container_ids,
            options=options,
            timeout=timeout,
            statuses=statuses,
        )

    async def pod_archives(self, checkpoint_path: str) -> dict[str, str]:
        return await anyio.to_thread.run_sync(checkpoint_pod.pod_archives, checkpoint_path)

    async def reopen_log(self, container_id: str) -> None:
        await logs.reopen_log(self.deps, container_id)

    async def update_resources(self, container_id: str, limits: ContainerResources) -> None:
        await resources.update_resources(self.deps, container_id, limits)

    async def update_plugin_limits(self, container_id: str, wanted: nri.LinuxResources) -> None:
        await resources.apply_plugin_update(self.deps, container_id, wanted)

    async def on_event(self, event: Event) -> None:
        exits.on_event(self.deps, event)

    # --- queries (memory only) ----------------------------------------------------------

    def get(self, container_id: str) -> Container:
        return self.store.get(container_id)

    def resolve(self, container_id: str) -> Container | None:
        return self.store.resolve(container_id)

    def all(self) -> list[Container]:
        return self.store.all()

    def running(self, container_id: str) -> Container:
        return self.store.running(container_id)

    def all_if_ready(self) -> list[Container]:
        return self.store.all_if_ready()

    def by_pod(self, sandbox_ids: list[str]) -> dict[str, list[Container]]:
        return self.store.by_pod(sandbox_ids)

    def spec(self, container_id: str) -> dict[str, Any] | None:
        return self.store.specs.get(container_id)

    def runtime(self, container: Container) -> tuple[str, dict[str, object] | None]:
        """The shim and its options (as JSON) the container runs with, for verbose status."""
        sandbox = self.deps.pods.store.resolve(container.sandbox_id)
        if sandbox is None:
            return "", None
        config = self.deps.config
        handler = resolve_handler(config, sandbox.runtime_handler)
        options = runc_options(handler, config)
        return handler.runtime_type, dataclasses.asdict(options) if options else None

    @property
    def snapshotter(self) -> str:
        return self.deps.config.containerd.snapshotter
