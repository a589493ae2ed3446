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
from criproxy.nri import hooks as nri_hooks
from criproxy.nri import linux as nri_linux
from criproxy.nri.adaptation import PluginError
from criproxy.oci.container import linux_resources, merge_resources, with_resources

if TYPE_CHECKING:
    from criproxy._generated.nri import api_pb2 as nri_api
    from criproxy.containers.deps import ContainerDeps
    from criproxy.containers.model import Container
    from criproxy.oci.container import ContainerResources


async def update_resources(
    deps: ContainerDeps, container_id: str, resources: ContainerResources
) -> None:
    """UpdateContainerResources: NRI's plugins see the update first and may change it."""
    container = deps.store.get(container_id)
    nri = deps.pods.nri
    extra: nri_api.LinuxResources | None = None
    if nri.plugins:
        sandbox = deps.pods.store.get(container.sandbox_id)
        spec = deps.store.specs.get(container.id)
        requested = merge_resources(container.config.resources, resources)
        if resources.memory_limit_in_bytes and not resources.memory_swap_limit_in_bytes:
            # swap follows a new memory limit (see _apply): not the old swap
            requested = dataclasses.replace(requested, memory_swap_limit_in_bytes=0)
        try:
            extra, others = await nri.update_container(
                nri_hooks.pod(sandbox),
                nri_hooks.container(container, spec),
                nri_linux.nri_resources(requested),
            )
        except PluginError as err:
            raise nri_hooks.vetoed(err) from None
        resources = merge_resources(resources, nri_linux.cri_resources(extra))
        await _apply(deps, container, resources, extra)
        if others:
            await nri.apply_updates(others, [])
        updated = deps.store.index.get(container.id)
        if updated is not None:
            try:
                await nri.post_update_container(
                    nri_hooks.pod(sandbox),
                    nri_hooks.container(updated, deps.store.specs.get(updated.id)),
                )
            except PluginError as err:
                nri_hooks.logged("PostUpdateContainer", err, container=container.id)
        return
    await _apply(deps, container, resources, extra)


async def apply_plugin_update(
    deps: ContainerDeps, container_id: str, wanted: nri_api.LinuxResources
) -> None:
    """An NRI plugin's own update of a container's limits (no events: it asked)."""
    container = deps.store.get(container_id)
    await _apply(deps, container, nri_linux.cri_resources(wanted), wanted)


async def _apply(
    deps: ContainerDeps,
    container: Container,
    resources: ContainerResources,
    extra: nri_api.LinuxResources | None,
) -> None:
    """The limits onto the running task and into the spec and record; `extra` carries
    what NRI sets beyond CRI's fields (pids, memory reservation, device rules, ...)."""
    container_id = container.id

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
        if extra is not None:
            nri_linux.apply_resources(oci, extra)
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
