"""`criproxy images import`: an OCI image layout or `docker save` tar into containerd.

For offline nodes: every blob goes into the content store (digests verified), the image is
unpacked, and the records get the names the archive gives (plus the id record CRI keeps),
so that the running criproxy lists the image as soon as containerd announces it.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import structlog

from criproxy.containerd.types import Descriptor
from criproxy.errors import CriproxyError, DataLoss, InvalidArgument
from criproxy.images import labels, reference
from criproxy.images.manifest import (
    chain_ids,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
)
from criproxy.images.pull import Progress, write_records
from criproxy.images.registry import INDEX_TYPES, MEDIA_DOCKER_MANIFEST
from criproxy.images.unpack import Unpacker

if TYPE_CHECKING:
    from pathlib import Path

    from criproxy.containerd import Containerd

log = structlog.get_logger("criproxy.images.archive")

_CHUNK = 1024 * 1024
NAME_ANNOTATION = "io.containerd.image.name"
OCI_REF_ANNOTATION = "org.opencontainers.image.ref.name"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@dataclass(frozen=True)
class Imported:
    id: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    """One image of the archive: its top descriptor and the names it should get."""

    target: Descriptor
    names: tuple[str, ...]


class _Archive:
    """Random access to the members of an image tar (reads happen in worker threads)."""

    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path)  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as err:
            raise InvalidArgument(f"{path} is not a readable tar archive: {err}") from None
        self._members = {m.name.lstrip("./"): m for m in self._tar.getmembers() if m.isfile()}

    def has(self, name: str) -> bool:
        return name in self._members

    def open(self, name: str) -> BinaryIO:
        member = self._members.get(name)
        if member is None:
            raise InvalidArgument(f"the archive has no {name}")
        handle = self._tar.extractfile(member)
        assert handle is not None
        return handle  # type: ignore[return-value]

    def size(self, name: str) -> int:
        return self._members[name].size

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def digest(self, name: str) -> str:
        hasher = hashlib.sha256()
        with self.open(name) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()

    def close(self) -> None:
        self._tar.close()


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def _normalise_name(name: str) -> str | None:
    """A full reference for a name from an archive, or None for a bare tag like `latest`."""
    if not name or ("/" not in name and ":" not in name and "@" not in name and "." not in name):
        try:
            return str(reference.parse_docker_ref(name)) if name and not name.islower() else None
        except CriproxyError:
            return None
    try:
        return str(reference.parse_docker_ref(name))
    except CriproxyError:
        return None


class Importer:
    def __init__(self, containerd: Containerd, snapshotter: str, sandbox_image: str = "") -> None:
        self._containerd = containerd
        self._snapshotter = snapshotter
        self._sandbox_image = sandbox_image

    async def import_file(self, path: Path) -> list[Imported]:
        archive = await anyio.to_thread.run_sync(_Archive, path)
        lease = await self._containerd.leases.create(
            "criproxy-import", datetime.timedelta(hours=24)
        )
        cd = self._containerd.with_lease(lease)
        try:
            if archive.has("index.json"):
                entries = await self._oci_entries(archive)
                writer = _Writer(cd, archive, blobs_by_digest=True)
            elif archive.has("manifest.json"):
                writer = _Writer(cd, archive, blobs_by_digest=False)
                entries = await writer.docker_entries()
            else:
                raise InvalidArgument(
                    f"{path} is neither an OCI image layout (index.json) nor a docker save "
                    "archive (manifest.json)"
                )
            results = []
            for entry in entries:
                results.append(await self._import_entry(cd, writer, entry))
            return results
        finally:
            with anyio.CancelScope(shield=True):
                await self._containerd.leases.delete(lease)
                await anyio.to_thread.run_sync(archive.close)

    async def _oci_entries(self, archive: _Archive) -> list[_Entry]:
        index = json.loads(await anyio.to_thread.run_sync(archive.read, "index.json"))
        entries = []
        for raw in index.get("manifests") or []:
            annotations = raw.get("annotations") or {}
            name = annotations.get(NAME_ANNOTATION) or annotations.get(OCI_REF_ANNOTATION, "")
            full = _normalise_name(str(name))
            desc = Descriptor(str(raw.get("mediaType", "")), raw["digest"], int(raw["size"]))
            entries.append(_Entry(desc, (full,) if full else ()))
        if not entries:
            raise InvalidArgument("the archive's index.json lists no images")
        return entries

    async def _import_entry(self, cd: Containerd, writer: _Writer, entry: _Entry) -> Imported:
        target = entry.target
        manifest_desc = target
        if target.media_type in INDEX_TYPES:
            body = await writer.small(target)
            children = parse_index(body)
            manifest_desc = select_manifest(children, host_platform())
            await writer.store(
                target,
                {
                    labels.GC_CONTENT_MANIFEST.format(index=i): c.descriptor.digest
                    for i, c in enumerate(children)
                },
            )
        manifest = parse_manifest(await writer.small(manifest_desc))
        config = parse_config(await writer.small(manifest.config))
        if len(config.diff_ids) != len(manifest.layers):
            raise DataLoss("the archive's manifest and config disagree on the number of layers")
        await writer.store(manifest.config, {})
        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
            await writer.store(layer, {labels.UNCOMPRESSED: diff_id})
        manifest_labels = {labels.GC_CONTENT_CONFIG: manifest.config.digest}
        for i, layer in enumerate(manifest.layers):
            manifest_labels[labels.GC_CONTENT_LAYER.format(index=i)] = layer.digest
        await writer.store(manifest_desc, manifest_labels)

        chains = chain_ids(config.diff_ids)
        unpacker = Unpacker(cd, self._snapshotter, Progress())
        for i in range(await unpacker.first_missing(chains), len(chains)):
            await unpacker.apply(
                manifest.layers[i], config.diff_ids[i], chains[i], chains[i - 1] if i else ""
            )
        if chains:
            await cd.content.set_labels(
                manifest.config.digest,
                {labels.GC_SNAPSHOT.format(snapshotter=self._snapshotter): chains[-1]},
            )
        names = [manifest.config.digest, *entry.names]
        await write_records(cd, names, target, pinned=bool(self._sandbox_image in entry.names))
        log.info("imported image", id=manifest.config.digest, names=list(entry.names))
        return Imported(manifest.config.digest, tuple(entry.names))


class _Writer:
    """Writes the archive's blobs into the content store, verifying each digest."""

    def __init__(self, cd: Containerd, archive: _Archive, *, blobs_by_digest: bool) -> None:
        self.cd = cd
        self.archive = archive
        self.by_digest = blobs_by_digest
        self.paths: dict[str, str] = {}
        """digest -> member name, for docker save archives."""
        self.synthetic: dict[str, bytes] = {}
        """Blobs made here (the manifests of docker save images)."""

    def _member(self, digest: str) -> str:
        return self.paths.get(digest) or _blob_path(digest)

    async def small(self, desc: Descriptor) -> bytes:
        if desc.digest in self.synthetic:
            return self.synthetic[desc.digest]
        body = await anyio.to_thread.run_sync(self.archive.read, self._member(desc.digest))
        if "sha256:" + hashlib.sha256(body).hexdigest() != desc.digest:
            raise DataLoss(f"blob {desc.digest} in the archive does not match its digest")
        return body

    async def store(self, desc: Descriptor, blob_labels: dict[str, str]) -> None:
        info = await self.cd.content.info(desc.digest)
        if info is not None:
            await self.cd.content.set_labels(desc.digest, blob_labels)
            return
        ref = f"criproxy-import-{desc.digest}"
        async with self.cd.content.writer(ref, desc.size, desc.digest) as writer:
            writer.offset = 0
            hasher = hashlib.sha256()
            if desc.digest in self.synthetic:
                data = self.synthetic[desc.digest]
                hasher.update(data)
                await writer.write(data)
            else:
                handle = await anyio.to_thread.run_sync(
                    self.archive.open, self._member(desc.digest)
                )
                try:
                    while chunk := await anyio.to_thread.run_sync(handle.read, _CHUNK):
                        hasher.update(chunk)
                        await writer.write(chunk)
                finally:
                    handle.close()
            if "sha256:" + hasher.hexdigest() != desc.digest:
                await self.cd.content.abort(ref)
                raise DataLoss(f"blob {desc.digest} in the archive does not match its digest")
            await writer.commit(blob_labels)

    async def docker_entries(self) -> list[_Entry]:
        """`docker save`: build a schema 2 manifest per image from manifest.json."""
        raw = json.loads(await anyio.to_thread.run_sync(self.archive.read, "manifest.json"))
        if not isinstance(raw, list) or not raw:
            raise InvalidArgument("the archive's manifest.json lists no images")
        entries = []
        for item in raw:
            config_path = str(item["Config"])
            config_digest = await anyio.to_thread.run_sync(self.archive.digest, config_path)
            self.paths[config_digest] = config_path
            config_size = await anyio.to_thread.run_sync(self.archive.size, config_path)
            layers = []
            for layer_path in item.get("Layers") or []:
                digest = await anyio.to_thread.run_sync(self.archive.digest, layer_path)
                self.paths[digest] = layer_path
                size = await anyio.to_thread.run_sync(self.archive.size, layer_path)
                media = await anyio.to_thread.run_sync(self._layer_media_type, layer_path)
                layers.append({"mediaType": media, "digest": digest, "size": size})
            manifest: dict[str, Any] = {
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {
                    "mediaType": MEDIA_DOCKER_CONFIG,
                    "digest": config_digest,
                    "size": config_size,
                },
                "layers": layers,
            }
            body = json.dumps(manifest, separators=(",", ":")).encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.synthetic[digest] = body
            names = tuple(
                n for n in (_normalise_name(str(t)) for t in item.get("RepoTags") or []) if n
            )
            entries.append(_Entry(Descriptor(MEDIA_DOCKER_MANIFEST, digest, len(body)), names))
        return entries

    def _layer_media_type(self, name: str) -> str:
        with self.archive.open(name) as handle:
            magic = handle.read(2)
        if magic == b"\x1f\x8b":
            with self.archive.open(name) as handle, gzip.open(handle) as unzipped:
                unzipped.read(1)  # a real gzip stream, not two lucky bytes
            return MEDIA_DOCKER_LAYER_GZIP
        return MEDIA_DOCKER_LAYER
