"""UpdatePodSandboxResources: record the pod's new overhead and resources and apply them
to the pod's cgroup (its cgroup_parent; a pod without one has none of its own). The kubelet
has usually sized that cgroup already; writing the same values again is harmless."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from criproxy.errors import FailedPrecondition, NotFound
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
