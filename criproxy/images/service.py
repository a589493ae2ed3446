"""The image domain service: pull, status, list, remove, and the index kept in memory."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containerd.events import ImageEvent
from criproxy.errors import CriproxyError, NotFound, unwrap
from criproxy.images import labels, reference
from criproxy.images.auth import Credentials, TokenCache
from criproxy.images.fsinfo import FilesystemUsage, ImageFilesystem
from criproxy.images.hosts import HostsConfig
from criproxy.images.manifest import (
    chain_ids,
    checkpoint_name,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
)
from criproxy.images.pull import Puller
from criproxy.images.registry import INDEX_TYPES, Registry
from criproxy.images.store import Image, ImageContent, ImageStore

if TYPE_CHECKING:
    from criproxy.config import Config
    from criproxy.containerd import Containerd, Event
    from criproxy.containerd.images import ImageRecord
    from criproxy.containerd.types import Descriptor

log = structlog.get_logger("criproxy.images")


def _config_credentials(config: Config) -> dict[str, Credentials]:
    return {
        host: Credentials.from_auth_config(
            username=auth.username,
            password=auth.password,
            auth=auth.auth,
            identity_token=auth.identitytoken,
        )
        for host, auth in config.registry.configs.items()
    }


class ImageService:
    def __init__(self, config: Config, containerd: Containerd) -> None:
        self._containerd = containerd
        self._snapshotter = config.containerd.snapshotter
        self.sandbox_image = str(reference.parse_docker_ref(config.sandbox_image))
        self.store = ImageStore(pinned_refs=frozenset({self.sandbox_image}))
        self.registry = Registry(
            HostsConfig(config.registry.config_path), _config_credentials(config)
        )
        self.puller = Puller(
            containerd,
            config.containerd.snapshotter,
            progress_timeout=config.image_pull_progress_timeout,
            max_concurrent_downloads=config.max_concurrent_downloads,
            discard_unpacked_layers=config.discard_unpacked_layers,
        )
        self.filesystem = ImageFilesystem(containerd, config.containerd.snapshotter)

    def reload(self, config: Config) -> None:
        """SIGHUP: the hosts directory and credentials again; tokens of old credentials go.
        A pull in flight keeps the repository (and credentials) it started with."""
        self.registry.hosts = HostsConfig(config.registry.config_path)
        self.registry.credentials = _config_credentials(config)
        self.registry.tokens = TokenCache()

    async def close(self) -> None:
        await self.registry.close()

    # --- queries (from memory) --------------------------------------------------------

    def status(self, ref_or_id: str) -> Image | None:
        return self.store.resolve(ref_or_id)

    def list(self, ref_or_id: str = "") -> list[Image]:
        if ref_or_id:
            image = self.store.resolve(ref_or_id)
            return [image] if image else []
        return self.store.list()

    async def fs_usage(self) -> FilesystemUsage:
        return await self.filesystem.usage()

    # --- changes --------------------------------------------------------------------

    async def pull(self, image: str, credentials: Credentials | None = None) -> Image:
        ref = reference.parse_docker_ref(image)
        repo = self.registry.repository(ref, credentials)
        result = await self.puller.pull(ref, repo, pinned=str(ref) == self.sandbox_image)
        for name in result.names:
            self.store.add(name, result.content, pinned=str(ref) == self.sandbox_image)
        found = self.store.get(result.content.id)
        assert found is not None
        return found

    async def ensure_sandbox_image(self) -> Image:
        """The pause image, pulled (and pinned) if it is not here yet."""
        image = self.store.resolve(self.sandbox_image)
        if image is not None:
            return image
        try:
            return await self.pull(self.sandbox_image)
        except Exception as err:
            leaf = unwrap(err)
            if not isinstance(leaf, CriproxyError):
                raise
            raise type(leaf)(f"sandbox image {self.sandbox_image}: {leaf.message}") from None

    async def remove(self, ref_or_id: str) -> None:
        """Remove every name of the image; a missing image is not an error."""
        image = self.store.resolve(ref_or_id)
        if image is None:
            return
        names = list(image.references)
        if not names:
            return
        *others, last = names

        async def delete(name: str, *, sync: bool) -> None:
            await self._containerd.images.delete(name, sync=sync)
            self.store.remove_reference(name)

        async with anyio.create_task_group() as tg:  # the other names at once
            for name in others:
                tg.start_soon(functools.partial(delete, name, sync=False))
        # The last delete waits for containerd's GC, so that the space is really freed.
        await delete(last, sync=True)
        log.info("removed image", id=image.id, references=names)

    # --- the index, kept current ------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        """Keep the index current when anyone (criproxy, ctr) changes an image record."""
        payload = event.payload
        if not isinstance(payload, ImageEvent):
            return
        if payload.action == "delete":
            self.store.remove_reference(payload.name)
            return
        removals = self.store.removals(payload.name)
        record = await self._containerd.images.get(payload.name)
        if record is None:
            self.store.remove_reference(payload.name)
            return
        content = await self.content_or_none(record)
        # A RemoveImage that returned while this event was read stands (it answered OK).
        if content is not None and self.store.removals(payload.name) == removals:
            pinned = record.labels.get(labels.CRI_PINNED) == labels.CRI_PINNED_VALUE
            self.store.add(record.name, content, pinned=pinned)

    async def content_or_none(self, record: ImageRecord) -> ImageContent | None:
        """What a record's target is; None (logged) for one that cannot be read."""
        try:
            return await self.read_content(record.target)
        except (CriproxyError, ValueError) as err:
            message = getattr(err, "message", str(err))
            log.warning("image record skipped", name=record.name, error=message)
            return None

    async def read_content(self, target: Descriptor) -> ImageContent:
        """What a record's target is, read from the content store (index -> manifest -> config)."""
        content = self._containerd.content
        size = 0
        manifest_desc = target
        if target.media_type in INDEX_TYPES:
            index = parse_index(await content.read_all(target.digest))
            manifest_desc = select_manifest(index, host_platform())
            size += target.size
        info = await content.info(manifest_desc.digest)
        if info is None:
            raise NotFound(f"manifest {manifest_desc.digest} is not in the content store")
        manifest = parse_manifest(await content.read_all(manifest_desc.digest))
        config = parse_config(await content.read_all(manifest.config.digest))
        chains = chain_ids(config.diff_ids)
        size += info.size + manifest.config.size + sum(layer.size for layer in manifest.layers)
        return ImageContent(
            id=manifest.config.digest,
            target=target,
            manifest_digest=manifest_desc.digest,
            config=config,
            size=size,
            chain_id=chains[-1] if chains else "",
            layers=manifest.layers,
            checkpoint_name=checkpoint_name(manifest),
        )
