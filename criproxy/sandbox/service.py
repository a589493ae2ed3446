"""The pod sandbox calls, one module each (run, stop, remove, update, exits), over the
sandbox store and the pod loops; this facade is what the CRI servicer and the server see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc

from criproxy.network.cni import Cni
from criproxy.sandbox import exits, portforward, remove, run, stop, update
from criproxy.sandbox.deps import PodDeps, PodPaths
from criproxy.sandbox.loop import PodLoops

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from criproxy.config import Config
    from criproxy.containerd import Containerd, Event
    from criproxy.images.service import ImageService
    from criproxy.oci.container import ContainerResources
    from criproxy.sandbox.model import PodConfig, Sandbox
    from criproxy.store import SandboxStore


class SandboxService:
    def __init__(
        self, config: Config, containerd: Containerd, images: ImageService, store: SandboxStore
    ) -> None:
        self.deps = PodDeps(
            config=config,
            containerd=containerd,
            images=images,
            cni=Cni(config.cni.conf_dir, config.cni.bin_dirs),
            store=store,
            loops=PodLoops(store.index.__contains__),
            paths=PodPaths.of(config),
        )
        self.store = store

    async def run(self) -> None:
        """Owns pod set-ups, pod loops and the CNI plugins' reaper; runs until cancelled
        (server shutdown)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.deps.cni.run)
            tg.start_soon(self.deps.loops.run)

    def before_stop(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """`hook(pod id)` runs before a pod stops (its containers stop first)."""
        self.deps.before_stop.append(hook)

    def before_remove(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """`hook(pod id)` runs before a pod goes (its containers go first)."""
        self.deps.before_remove.append(hook)

    async def run_pod(self, pod: PodConfig, runtime_handler: str) -> str:
        return await run.run_pod(self.deps, pod, runtime_handler)

    async def stop_pod(self, sandbox_id: str) -> None:
        await stop.stop_pod(self.deps, sandbox_id)

    async def remove_pod(self, sandbox_id: str) -> None:
        await remove.remove_pod(self.deps, sandbox_id)

    async def update_resources(
        self,
        sandbox_id: str,
        overhead: ContainerResources | None,
        resources: ContainerResources | None,
    ) -> None:
        await update.update_resources(self.deps, sandbox_id, overhead, resources)

    def ready(self, sandbox_id: str) -> Sandbox:
        return self.store.ready(sandbox_id)

    async def dial(self, sandbox_id: str, port: int) -> anyio.abc.ByteStream:
        return await portforward.dial(self.deps, sandbox_id, port)

    def get(self, sandbox_id: str) -> Sandbox:
        return self.store.get(sandbox_id)

    def resolve(self, sandbox_id: str) -> Sandbox | None:
        return self.store.resolve(sandbox_id)

    def pods(self) -> list[Sandbox]:
        return self.store.pods()

    def pods_if_ready(self) -> list[Sandbox]:
        return self.store.pods_if_ready()

    async def on_event(self, event: Event) -> None:
        exits.on_event(self.deps, event)
