"""CreateContainer: the container's snapshot on the image's layers, its OCI spec, and its
containerd record (criproxy's JSON as an extension). No task yet: StartContainer makes it.

The name is reserved before any await (one container per name); the work runs in the
pod's loop, so a kubelet whose call times out still gets the container on its retry.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy import cdi
from criproxy._generated.nri import api_pb2 as nri_api
from criproxy.containerd import ContainerRecord
from criproxy.containers import image_volumes, restore, rootfs, signing
from criproxy.containers import spec as spec_builder
from criproxy.containers.checkpoint import key_path
from criproxy.containers.deps import remove_tree
from criproxy.containers.model import EXTENSION, KIND, Container, ImageInfo
from criproxy.containers.resources import effective
from criproxy.errors import FailedPrecondition, InvalidArgument, NotFound
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError, container_message
from criproxy.nri.adaptation import apply as apply_adjustment
from criproxy.nri.linux import cri_resources
from criproxy.oci.container import ContainerResources, merge_resources
from criproxy.sandbox.handlers import cri_labels, resolve_handler, runc_options
from criproxy.sandbox.model import KIND_LABEL, SANDBOX_ID_LABEL
from criproxy.steps import UndoStack, both

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from criproxy.config import RuntimeHandler
    from criproxy.containers.deps import ContainerDeps
    from criproxy.images.store import Image
    from criproxy.oci.container import ContainerConfig
    from criproxy.sandbox.model import PodMetadata, Sandbox

log = structlog.get_logger("criproxy.containers")

SETUP_LEASE = datetime.timedelta(hours=1)
RESTORED_FROM = "io.criproxy.checkpoint.archive"
"""The annotation naming the checkpoint archive a container was restored from."""


def name_key(config: ContainerConfig, pod: PodMetadata) -> str:
    """What makes a container's name unique (as containerd's CRI builds it)."""
    return f"{config.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.attempt}"


async def create(deps: ContainerDeps, sandbox_id: str, config: ContainerConfig) -> str:
    store = deps.store
    store.gate.require()
    sandbox = deps.pods.store.ready(sandbox_id)
    archive = restore.archive_path(config.image)
    image = None if archive else deps.images.status(config.image)
    if image is None and not archive:
        raise NotFound(f"image {config.image!r} not found: pull it first")
    key = name_key(config, sandbox.config.metadata)
    existing = store.names.get(key)
    if existing is not None and existing in store.undelivered and existing in store.index:
        # the kubelet's earlier call timed out while the container was being made
        store.undelivered.discard(existing)
        return existing
    container_id = secrets.token_hex(32)
    store.names.reserve(key, container_id)  # before any await: one container per name
    log_path = _log_path(sandbox.config.log_directory, config.log_path)
    job = functools.partial(
        _create,
        deps,
        container_id=container_id,
        sandbox=sandbox,
        config=config,
        image=image,
        log_path=log_path,
        archive=archive,
    )
    try:
        # A plugin joining NRI now is synchronised before or after this container, never
        # in between: it sees it in its snapshot or as an event.
        async with deps.pods.nri.barrier.change():
            container: Container = await deps.pods.loops.call(sandbox.id, job)
    except Exception:
        # The job failed (it undid its steps), or never ran (the pod went meanwhile, or
        # stopped before the job's turn): either way the name is free again.
        store.names.release(container_id)
        raise
    except BaseException:
        # Cancelled: the job still runs to its end in the pod's loop; a retry gets it.
        store.undelivered.add(container_id)
        raise
    log.info("container created", container=container.id, sandbox=sandbox.id, name=config.name)
    deps.publish("created", container)
    if deps.pods.nri.plugins:
        try:
            await deps.pods.nri.post_create_container(
                nri_hooks.pod(sandbox),
                nri_hooks.container(container, deps.store.specs.get(container.id)),
            )
        except PluginError as err:
            nri_hooks.logged("PostCreateContainer", err, container=container.id)
    return container.id


async def _create(
    deps: ContainerDeps,
    *,
    container_id: str,
    sandbox: Sandbox,
    config: ContainerConfig,
    image: Image | None,
    log_path: str,
    archive: str = "",
) -> Container:
    current = deps.pods.store.index.get(sandbox.id)
    if current is None or current.state != "ready":
        raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
    handler = resolve_handler(deps.config, current.runtime_handler)
    snapshotter = deps.config.containerd.snapshotter
    bound = log.bind(container=container_id, sandbox=sandbox.id)
    undo = UndoStack(bound)
    undo.push_sync(functools.partial(remove_tree, deps.paths.io_root / container_id))
    undo.push_sync(functools.partial(remove_tree, deps.paths.volumes_root / container_id))
    checkpoint: restore.Checkpoint | None = None
    what = ""
    try:
        if archive or (image is not None and image.content.checkpoint_name):
            checkpoint, image, config, what = await _restoring(
                deps, handler, container_id, config, image, archive, undo
            )
        assert image is not None
        async with deps.containerd.leased(
            "criproxy-container", SETUP_LEASE, release_in=deps.background
        ) as cd:
            # pushed first: a prepare cancelled on its way may still have made it
            undo.push(
                functools.partial(deps.containerd.snapshots.remove, snapshotter, container_id)
            )
            volume_labels: dict[str, str] = {}
            if any(m.image for m in config.mounts):
                volumes = await image_volumes.prepare(deps, cd, container_id, config.mounts, undo)
                config = dataclasses.replace(config, mounts=volumes.mounts)
                volume_labels = volumes.labels
            prepare = functools.partial(
                cd.snapshots.prepare, snapshotter, container_id, image.content.chain_id
            )
            user_files = spec_builder.known_user_files(image)
            build = functools.partial(
                spec_builder.build,
                container_id,
                config,
                image,
                current,
                user_files=user_files,
                cfg=deps.config,
                volumes_dir=deps.paths.volumes_root / container_id,
                target_pid=_target_pid(deps, current, config),
            )
            if checkpoint is not None:
                mounts = await prepare()
                await anyio.to_thread.run_sync(restore.apply_rootfs_diff, checkpoint, mounts, what)
                built = await anyio.to_thread.run_sync(functools.partial(build, mounts=mounts))
                differ = restore.security_differences(checkpoint.spec, built.spec)
                if differ:
                    raise FailedPrecondition(
                        f"cannot restore {what}: the request's security "
                        f"settings differ from the checkpointed container's in "
                        f"{', '.join(differ)}; a restored process keeps its own, so the "
                        "request must grant exactly the same"
                    )
            elif spec_builder.needs_rootfs(image, user_files):
                mounts = await prepare()
                built = await anyio.to_thread.run_sync(functools.partial(build, mounts=mounts))
            else:  # the spec needs nothing from the snapshot: make both side by side
                mounts, built = await both(
                    prepare(), anyio.to_thread.run_sync(functools.partial(build, mounts=()))
                )
            await inject_cdi(deps, config.cdi_devices, built.spec)
            config = await _nri_adjust(deps, current, container_id, config, built.spec)
            if config.resources is not None:
                config = dataclasses.replace(
                    config, resources=effective(config.resources, built.swap_controller)
                )
            container = Container(
                id=container_id,
                sandbox_id=sandbox.id,
                config=config,
                image=ImageInfo(
                    id=image.id,
                    ref=image.repo_digests[0] if image.repo_digests else image.id,
                    name=image.repo_tags[0] if image.repo_tags else config.image,
                ),
                created_at_ns=time.time_ns(),
                log_path=log_path,
                stop_signal=config.stop_signal or built.stop_signal,
                user=built.user,
                io_dir=str(deps.paths.io_root / container_id),
                restore_dir=str(checkpoint.dir) if checkpoint is not None else "",
            )
            await cd.containers.create(
                ContainerRecord(
                    id=container_id,
                    labels={
                        KIND_LABEL: KIND,
                        SANDBOX_ID_LABEL: sandbox.id,
                        "io.kubernetes.container.name": config.name,
                        **cri_labels(sandbox.config),
                        **volume_labels,
                    },
                    image=container.image.name,
                    runtime=handler.runtime_type,
                    runtime_options=runc_options(handler, deps.config),
                    spec=built.spec,
                    snapshotter=snapshotter,
                    snapshot_key=container_id,
                    extensions={EXTENSION: container.to_json()},
                )
            )
    except BaseException:
        deps.store.names.release(container_id)
        deps.store.undelivered.discard(container_id)
        await undo.unwind()
        raise
    deps.store.put(container, built.spec)
    deps.prepared_mounts[container_id] = mounts  # the start's, saving it a round trip
    return container


async def _restoring(  # noqa: PLR0917
    deps: ContainerDeps,
    handler: RuntimeHandler,
    container_id: str,
    config: ContainerConfig,
    image: Image | None,
    archive: str,
    undo: UndoStack,
) -> tuple[restore.Checkpoint, Image, ContainerConfig, str]:
    """A restore's checkpoint unpacked and verified (it is untrusted input), the image the
    checkpointed container ran, and the request's config on that image; also what the
    checkpoint is called in messages."""
    if runc_options(handler, deps.config) is None:
        raise FailedPrecondition(
            f"restoring a checkpoint needs the runc shim, not {handler.runtime_type}"
        )
    restore_dir = deps.paths.restore_root / container_id
    undo.push_sync(functools.partial(remove_tree, restore_dir))
    secret = await anyio.to_thread.run_sync(signing.key, key_path(deps))
    if archive:
        what = f"checkpoint archive {archive}"
        checkpoint = await anyio.to_thread.run_sync(restore.unpack, archive, restore_dir, secret)
    else:
        assert image is not None
        what = f"checkpoint image {config.image}"
        checkpoint = await _unpack_image(deps, image, config.image, restore_dir, secret, undo)
    config = dataclasses.replace(
        config,
        image=checkpoint.image_refs[0] if checkpoint.image_refs else "",
        annotations={**config.annotations, RESTORED_FROM: archive or config.image},
    )
    return checkpoint, _checkpoint_image(deps, checkpoint, what), config, what


async def _unpack_image(  # noqa: PLR0917
    deps: ContainerDeps, image: Image, name: str, dest: Path, secret: bytes, undo: UndoStack
) -> restore.Checkpoint:
    """A checkpoint image's files into `dest`, read from a read-only view of its one layer."""
    what = f"checkpoint image {name}"
    if len(image.content.layers) != 1:
        raise InvalidArgument(
            f"{what} has {len(image.content.layers)} layers: a checkpoint image has one, "
            "holding the checkpoint archive's files"
        )
    snapshotter = deps.config.containerd.snapshotter
    view = f"{dest.name}-checkpoint"
    async with deps.containerd.leased(
        "criproxy-container", SETUP_LEASE, release_in=deps.background
    ) as cd:
        undo.push(functools.partial(deps.containerd.snapshots.remove, snapshotter, view))
        mounts = await cd.snapshots.view(snapshotter, view, image.content.chain_id)
        try:
            dirs = rootfs.layer_dirs(mounts)
        except rootfs.UnreadableRootfs as err:
            raise FailedPrecondition(f"{what} cannot be read: {err}") from None
        if len(dirs) != 1:
            raise FailedPrecondition(f"{what} cannot be read: its view has {len(dirs)} layers")
        checkpoint = await anyio.to_thread.run_sync(
            restore.unpack_image, dirs[0], dest, secret, name
        )
    await deps.containerd.snapshots.remove(snapshotter, view)  # read: no longer needed
    return checkpoint


def _checkpoint_image(deps: ContainerDeps, checkpoint: restore.Checkpoint, what: str) -> Image:
    """The image the checkpointed container ran, which must be on this node."""
    for ref in checkpoint.image_refs:
        image = deps.images.status(ref)
        if image is not None and not image.content.checkpoint_name:  # never one on another
            return image
    named = checkpoint.image_refs[0] if checkpoint.image_refs else "(none named)"
    raise FailedPrecondition(
        f"cannot restore {what}: its image {named} is not on this node; pull it first"
    )


async def inject_cdi(deps: ContainerDeps, names: Sequence[str], spec: dict[str, Any]) -> None:
    """CDI devices into the spec; one that cannot be injected fails the create."""
    if not names:
        return
    if not deps.config.enable_cdi:
        raise FailedPrecondition(
            f"CDI devices {', '.join(names)} requested, but CDI is off (enable_cdi = false)"
        )
    try:
        await anyio.to_thread.run_sync(cdi.inject, spec, names, deps.config.cdi_spec_dirs)
    except cdi.CdiError as err:
        raise FailedPrecondition(f"cannot inject CDI devices: {err}") from None


async def _nri_adjust(
    deps: ContainerDeps,
    sandbox: Sandbox,
    container_id: str,
    config: ContainerConfig,
    spec: dict[str, Any],
) -> ContainerConfig:
    """NRI's plugins' adjustments into the container's spec, before containerd sees it
    (and before the container is listed); a plugin's veto fails the create. The config
    comes back with the resources as adjusted, which the container's status reports."""
    nri = deps.pods.nri
    if not nri.plugins:
        return config
    message = container_message(
        container_id,
        sandbox.id,
        config.name,
        nri_api.CONTAINER_CREATED,
        spec,
        labels=tuple(config.labels.items()),
        created_at=time.time_ns(),
    )
    try:
        adjust = await nri.create_container(nri_hooks.pod(sandbox), message)
    except PluginError as err:
        raise nri_hooks.vetoed(err) from None
    apply_adjustment(spec, adjust)
    await inject_cdi(deps, [d.name for d in adjust.CDI_devices], spec)
    linux = adjust.linux
    if not (linux.HasField("resources") or linux.HasField("oom_score_adj")):
        return config
    resources = config.resources or ContainerResources()
    if adjust.linux.HasField("resources"):
        resources = merge_resources(resources, cri_resources(adjust.linux.resources))
    if adjust.linux.HasField("oom_score_adj"):
        resources = dataclasses.replace(resources, oom_score_adj=adjust.linux.oom_score_adj.value)
    return dataclasses.replace(config, resources=resources)


def _target_pid(deps: ContainerDeps, sandbox: Sandbox, config: ContainerConfig) -> int:
    """The pid whose namespace a container with pid mode TARGET joins."""
    if config.security.pid != "target":
        return 0
    target = deps.store.index.get(config.security.target_id)
    if target is None or target.sandbox_id != sandbox.id:
        raise NotFound(
            f"target container {config.security.target_id!r} not found in pod {sandbox.id}"
        )
    if target.state != "running" or not target.pid:
        raise FailedPrecondition(f"target container {target.id} is not running")
    return target.pid


def _log_path(log_directory: str, log_path: str) -> str:
    """The absolute log file; its directory is made when the container starts (as
    containerd's CRI does), also when the pod's log directory is gone."""
    if not log_path or not log_directory:
        return ""
    return os.path.normpath(os.path.join(log_directory, log_path))
