"""A container's resource limits as applied, and UpdateContainerResources.

As containerd: unset fields keep their values; the merged limits go to the running task
and into the record's spec (a created container starts with them; an exited one only
records them).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

import anyio

from criproxy import host
from criproxy.errors import NotFound
from criproxy.oci.container import linux_resources, merge_resources, with_resources

if TYPE_CHECKING:
    from criproxy.containers.deps import ContainerDeps
    from criproxy.oci.container import ContainerResources


async def update_resources(
    deps: ContainerDeps, container_id: str, resources: ContainerResources
) -> None:
    container = deps.store.get(container_id)

    async def update() -> None:
        current = deps.store.index.get(container.id)
        if current is None:
            raise NotFound(f"container {container_id!r} not found")
        merged = merge_resources(current.config.resources, resources)
        if resources.memory_limit_in_bytes and not resources.memory_swap_limit_in_bytes:
            # swap follows a new memory limit (as containerd re-applies WithResources)
            merged = dataclasses.replace(merged, memory_swap_limit_in_bytes=0)
        swap, hugetlb = await anyio.to_thread.run_sync(_host_limits)
        merged = effective(merged, swap)
        oci = linux_resources(merged, swap_controller=swap, hugetlb_controller=hugetlb)
        if current.state == "running":
            # a task that just exited (its exit not yet recorded) keeps only the spec
            with contextlib.suppress(NotFound):
                await deps.containerd.tasks.update(current.id, oci)
        spec = with_resources(deps.store.specs.get(current.id) or {}, oci)
        await deps.containerd.containers.set_spec(current.id, spec)
        deps.store.specs[current.id] = spec
        updated = current.with_changes(config=dataclasses.replace(current.config, resources=merged))
        await deps.persist(updated)
        deps.store.put(updated)

    await deps.pods.loops.call(container.sandbox_id, update)


def effective(resources: ContainerResources, swap_controller: bool) -> ContainerResources:
    """The limits as applied: swap defaults to the memory limit where the host limits swap
    (containerd's WithResources), and the status reports that value."""
    if resources.memory_swap_limit_in_bytes or not resources.memory_limit_in_bytes:
        return resources
    if not swap_controller:
        return resources
    return dataclasses.replace(
        resources, memory_swap_limit_in_bytes=resources.memory_limit_in_bytes
    )


def _host_limits() -> tuple[bool, bool]:
    """(swap limits, hugetlb on a usable hierarchy) on this host. Blocking."""
    return host.swap_controller_available(), "hugetlb" in host.cgroup_info().controllers
