"""UpdatePodSandboxResources: record the pod's new overhead and resources and apply them
to the pod's cgroup (its cgroup_parent; a pod without one has none of its own). The kubelet
has usually sized that cgroup already; writing the same values again is harmless."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition, NotFound
from criproxy.nri import hooks as nri_hooks
from criproxy.nri import linux as nri_linux
from criproxy.nri.adaptation import PluginError
from criproxy.stats import apply_pod_limits

if TYPE_CHECKING:
    from criproxy.oci.container import ContainerResources
    from criproxy.sandbox.deps import PodDeps


async def update_resources(
    deps: PodDeps,
    sandbox_id: str,
    overhead: ContainerResources | None,
    resources: ContainerResources | None,
) -> None:
    sandbox = deps.store.get(sandbox_id)
    if deps.nri.plugins:  # a plugin's veto comes before anything changes
        try:
            await deps.nri.update_pod_sandbox(
                nri_hooks.pod(sandbox),
                nri_linux.nri_resources(overhead) if overhead else None,
                nri_linux.nri_resources(resources) if resources else None,
            )
        except PluginError as err:
            raise nri_hooks.vetoed(err) from None

    async def update() -> None:
        current = deps.store.index.get(sandbox.id)
        if current is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        parent = current.config.cgroup_parent
        if resources and parent and current.state == "ready":
            try:
                await anyio.to_thread.run_sync(
                    apply_pod_limits,
                    parent,
                    deps.config.cgroup_driver == "systemd",
                    resources,
                )
            except OSError as err:
                raise FailedPrecondition(
                    f"cannot apply resources to the cgroup {parent!r} of pod {sandbox.id}: "
                    f"{err.strerror or err}"
                ) from None
        await deps.persist(current.with_changes(overhead=overhead, resources=resources))

    await deps.loops.call(sandbox.id, update)
    if deps.nri.plugins:
        try:
            await deps.nri.post_update_pod_sandbox(nri_hooks.pod(deps.store.get(sandbox.id)))
        except PluginError as err:
            nri_hooks.logged("PostUpdatePodSandbox", err, pod=sandbox.id)
