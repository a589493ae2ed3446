"""Pulling an image: resolve, fetch into containerd's content store, unpack, record.

Layers download in parallel (bounded) and each is unpacked as soon as it and its parents
are in, while later layers still download. Everything is written under a lease, so
containerd's GC never collects a half-pulled image; blobs are written through resumable
ingests named after their digest, so a pull that breaks off (or a criproxy that dies)
resumes from what was written. A pull with no progress, downloading or unpacking, for
`image_pull_progress_timeout` is cancelled.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

import anyio
import structlog

from criproxy import metrics
from criproxy.containerd.images import ImageRecord
from criproxy.errors import (
    CriproxyError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Unavailable,
)
from criproxy.images import labels
from criproxy.images.layerstream import LayerStream, can_stream
from criproxy.images.manifest import (
    ImageConfig,
    Manifest,
    chain_ids,
    checkpoint_name,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
)
from criproxy.images.registry import INDEX_TYPES, MANIFEST_TYPES
from criproxy.images.store import ImageContent
from criproxy.images.unpack import StreamedUnpacker, Unpacker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from criproxy.containerd import Containerd
    from criproxy.containerd.content import ContentWriter
    from criproxy.containerd.types import Descriptor
    from criproxy.images.reference import Reference
    from criproxy.images.registry import Repository

log = structlog.get_logger("criproxy.images.pull")

LEASE_EXPIRY = datetime.timedelta(hours=24)
_CHUNK_RETRIES = 3
_PROGRESS_LOG_INTERVAL = 5.0

_K = TypeVar("_K")
_V = TypeVar("_V")


class SingleFlight(Generic[_K, _V]):
    """Concurrent calls for one key share one execution and its result.

    If the execution is cancelled (its caller went away), a waiter runs it anew; a pull
    resumes from what was written, so nothing is downloaded twice.
    """

    def __init__(self) -> None:
        self._running: dict[_K, _Flight[_V]] = {}

    async def do(self, key: _K, run: Callable[[], Awaitable[_V]]) -> _V:
        while True:
            flight = self._running.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return flight.value  # type: ignore[return-value]
        flight = _Flight[_V]()
        self._running[key] = flight
        try:
            flight.value = await run()
            flight.finished = True
            return flight.value
        except Exception as err:
            flight.error = err
            raise
        finally:
            del self._running[key]
            flight.done.set()


@dataclass
class _Flight(Generic[_V]):
    done: anyio.Event = field(default_factory=anyio.Event)
    value: _V | None = None
    finished: bool = False
    error: Exception | None = None


async def write_records(
    cd: Containerd, names: list[str], target: Descriptor, *, pinned: bool = False
) -> None:
    """The image records CRI keeps: the id, the tag and the repo digest, one target."""
    record_labels = {labels.CRI_IMAGE: labels.CRI_IMAGE_MANAGED}
    if pinned:
        record_labels[labels.CRI_PINNED] = labels.CRI_PINNED_VALUE
    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(cd.images.put, ImageRecord(name, target, record_labels))


@dataclass
class Progress:
    """When the pull last moved; an unpack in flight counts as moving."""

    last: float = field(default_factory=time.monotonic)
    unpacking: int = 0
    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def touch(self) -> None:
        self.last = time.monotonic()

    def add(self, digest: str, count: int) -> None:
        self.done[digest] = self.done.get(digest, 0) + count
        metrics.PULL_BYTES.inc(count)
        self.touch()

    def stalled_for(self) -> float:
        return 0.0 if self.unpacking else time.monotonic() - self.last


@dataclass(frozen=True)
class PullResult:
    content: ImageContent
    names: tuple[str, ...]


_NO_PARENT = anyio.Event()
_NO_PARENT.set()


@dataclass(frozen=True)
class _Layer:
    desc: Descriptor
    urls: tuple[str, ...]
    diff_id: str
    chain: str
    parent: str
    parent_done: anyio.Event


class Puller:
    """Pulls into one containerd namespace with one snapshotter."""

    def __init__(
        self,
        containerd: Containerd,
        snapshotter: str,
        *,
        progress_timeout: float,
        max_concurrent_downloads: int = 3,
        discard_unpacked_layers: bool = True,
    ) -> None:
        self._containerd = containerd
        self.snapshotter = snapshotter
        self._progress_timeout = progress_timeout
        self.max_concurrent_downloads = max(1, max_concurrent_downloads)
        self._pulls: SingleFlight[str, PullResult] = SingleFlight()
        self.blobs: SingleFlight[str, None] = SingleFlight()
        self.unpacks: SingleFlight[str, None] = SingleFlight()
        self.discard_unpacked_layers = discard_unpacked_layers
        self.streaming = StreamedUnpacker.available(snapshotter)
        """Layers unpack as they download (else through the content store and containerd's
        differ: other snapshotters, or a kernel without openat2)."""
        self.downloads = 0
        """Blobs fetched from a registry so far (tests check sharing with it)."""

    async def pull(self, ref: Reference, repo: Repository, *, pinned: bool = False) -> PullResult:
        return await self._pulls.do(str(ref), lambda: self._measured(ref, repo, pinned))

    async def _measured(self, ref: Reference, repo: Repository, pinned: bool) -> PullResult:
        """One pull (shared by its callers), counted in flight and timed by outcome."""
        started, outcome = time.monotonic(), "Cancelled"
        metrics.PULLS_IN_FLIGHT.inc()
        try:
            result = await self._pull(ref, repo, pinned)
            outcome = "OK"
            return result
        except CriproxyError as err:
            outcome = type(err).__name__
            raise
        except Exception:
            outcome = "Internal"
            raise
        finally:
            metrics.PULLS_IN_FLIGHT.dec()
            metrics.PULL_DURATION.labels(outcome).observe(time.monotonic() - started)

    async def _pull(self, ref: Reference, repo: Repository, pinned: bool) -> PullResult:
        started = time.monotonic()
        progress = Progress()
        lease = await self._containerd.leases.create("criproxy-pull", LEASE_EXPIRY)
        cd = self._containerd.with_lease(lease)
        job = _PullJob(self, cd, ref, repo, progress)
        timed_out = False
        try:
            result: PullResult | None = None
            async with anyio.create_task_group() as tg:

                async def watchdog() -> None:
                    nonlocal timed_out
                    last_log = time.monotonic()
                    while True:
                        await anyio.sleep(0.5)
                        if self._progress_timeout and (
                            progress.stalled_for() > self._progress_timeout
                        ):
                            timed_out = True
                            tg.cancel_scope.cancel()
                            return
                        if time.monotonic() - last_log >= _PROGRESS_LOG_INTERVAL:
                            last_log = time.monotonic()
                            for digest, total in progress.total.items():
                                done = progress.done.get(digest, 0)
                                if 0 < done < total:
                                    job.log.info(
                                        "pulling layer", layer=digest, bytes=done, total=total
                                    )

                async def work() -> None:
                    nonlocal result
                    result = await job.run(pinned)
                    tg.cancel_scope.cancel()

                tg.start_soon(watchdog)
                tg.start_soon(work)
            if timed_out:
                raise DeadlineExceeded(
                    f"pull of {ref} cancelled: no progress for "
                    f"{self._progress_timeout:g}s (image_pull_progress_timeout)"
                )
            assert result is not None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._containerd.leases.delete(lease)
            raise
        # The image records now reference everything: the lease can go.
        await self._containerd.leases.delete(lease)
        job.log.info(
            "pulled image",
            id=result.content.id,
            size=result.content.size,
            seconds=round(time.monotonic() - started, 3),
        )
        return result


class _PullJob:
    """The state of one pull: its lease-bound client, repository, progress and log."""

    def __init__(
        self,
        puller: Puller,
        cd: Containerd,
        ref: Reference,
        repo: Repository,
        progress: Progress,
    ) -> None:
        self.puller = puller
        self.cd = cd
        self.ref = ref
        self.repo = repo
        self.progress = progress
        self.snapshotter = puller.snapshotter
        self.log = log.bind(image=str(ref))
        # containerd's key names the registry host without its port.
        host = urlsplit(f"//{ref.domain}").hostname or ref.domain
        self.source_key = labels.DISTRIBUTION_SOURCE.format(host=host)
        # Per image, as containerd's max_concurrent_downloads.
        self.download_slots = anyio.Semaphore(puller.max_concurrent_downloads)

    async def run(self, pinned: bool) -> PullResult:
        target = await self.repo.resolve()
        self.progress.touch()
        manifest_desc = target
        size = 0
        if target.media_type in INDEX_TYPES:
            index_body = await self._small_blob(target)
            entries = parse_index(index_body)
            manifest_desc = select_manifest(entries, host_platform())
            # Like containerd's client: the index references all its manifests.
            index_labels = {
                labels.GC_CONTENT_MANIFEST.format(index=i): e.descriptor.digest
                for i, e in enumerate(entries)
            }
            await self._store_small(target, index_body, index_labels)
            size += target.size
        manifest_body = await self._small_blob(manifest_desc)
        manifest = parse_manifest(manifest_body)
        config_body = await self._small_blob(manifest.config)
        config = parse_config(config_body)
        _check_layers(manifest, config)
        manifest_labels = {labels.GC_CONTENT_CONFIG: manifest.config.digest}
        for i, layer in enumerate(manifest.layers):
            manifest_labels[labels.GC_CONTENT_LAYER.format(index=i)] = layer.digest
        self.progress.touch()
        size += manifest_desc.size + manifest.config.size + sum(x.size for x in manifest.layers)

        chains = chain_ids(config.diff_ids)
        first_missing = await Unpacker(self.cd, self.snapshotter, self.progress).first_missing(
            chains
        )
        committed = [anyio.Event() for _ in manifest.layers]
        for event in committed[:first_missing]:
            event.set()  # unpacked already: containerd does not fetch these either

        async with anyio.create_task_group() as tg:
            # config and manifest into the content store beside the layers (the pull's
            # lease keeps them all until the image records reference them)
            tg.start_soon(self._store_small, manifest.config, config_body, {})
            tg.start_soon(self._store_small, manifest_desc, manifest_body, manifest_labels)
            # Layers start in order, so the bottom ones arrive (and commit) first.
            for i in range(first_missing, len(manifest.layers)):
                await self.download_slots.acquire()
                tg.start_soon(
                    self._layer,
                    _Layer(
                        manifest.layers[i],
                        manifest.layer_urls[i] if manifest.layer_urls else (),
                        config.diff_ids[i],
                        chains[i],
                        chains[i - 1] if i else "",
                        committed[i - 1] if i else _NO_PARENT,
                    ),
                    committed[i],
                )
        top_chain = chains[-1] if chains else ""
        if top_chain:
            await self.cd.content.set_labels(
                manifest.config.digest,
                {labels.GC_SNAPSHOT.format(snapshotter=self.snapshotter): top_chain},
            )

        content = ImageContent(
            id=manifest.config.digest,
            target=target,
            manifest_digest=manifest_desc.digest,
            config=config,
            size=size,
            chain_id=top_chain,
            layers=manifest.layers,
            checkpoint_name=checkpoint_name(manifest),
        )
        names = [content.id]
        if self.ref.tag:
            names.append(str(self.ref))
        names.append(f"{self.ref.name}@{target.digest}")
        await write_records(self.cd, names, target, pinned=pinned)
        return PullResult(content, tuple(names))

    # --- content ----------------------------------------------------------------------

    def _with_source(self, existing: dict[str, str], blob_labels: dict[str, str]) -> dict[str, str]:
        """Add this repository to the blob's distribution-source label (a sorted list)."""
        repos = {r for r in existing.get(self.source_key, "").split(",") if r}
        repos.add(self.ref.path)
        return {**blob_labels, self.source_key: ",".join(sorted(repos))}

    async def _small_blob(self, desc: Descriptor) -> bytes:
        """A manifest, index or config: from the content store when there, else the registry."""
        if await self.cd.content.info(desc.digest) is not None:
            body = await self.cd.content.read_all(desc.digest)
            if _digest(body) == desc.digest:
                return body
        if desc.media_type in MANIFEST_TYPES:
            body = await self.repo.fetch_manifest(desc)
        else:
            body = b"".join([c async for c in self.repo.fetch_blob(desc)])
            if _digest(body) != desc.digest or len(body) != desc.size:
                raise DataLoss(
                    f"blob {desc.digest} of {self.repo.ref}: registry sent {len(body)} bytes "
                    f"with digest {_digest(body)}"
                )
        self.puller.downloads += 1
        metrics.PULL_BYTES.inc(len(body))
        return body

    async def _store_small(
        self, desc: Descriptor, body: bytes, blob_labels: dict[str, str]
    ) -> None:
        info = await self.cd.content.info(desc.digest)
        if info is not None:
            await self.cd.content.set_labels(
                desc.digest, self._with_source(info.labels, blob_labels)
            )
            return
        async with self.cd.content.writer(_ingest_ref(desc), len(body), desc.digest) as writer:
            writer.offset = 0  # small blobs restart rather than resume
            await writer.write(body)
            await writer.commit(self._with_source({}, blob_labels))

    async def _layer(self, layer: _Layer, done: anyio.Event) -> None:
        """Download and unpack one layer (holding a download slot while it downloads)."""
        holding = True

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self.download_slots.release()

        try:
            desc = layer.desc
            self.progress.total[desc.digest] = desc.size
            streamed = (
                self.puller.streaming
                and can_stream(desc.media_type)
                and await self.cd.content.info(desc.digest) is None
            )
            if streamed:
                await self.puller.unpacks.do(
                    layer.chain, lambda: self._stream_layer(layer, release)
                )
            else:
                await self.puller.blobs.do(
                    desc.digest,
                    lambda: self._download_blob(
                        desc, layer.urls, {labels.UNCOMPRESSED: layer.diff_id}
                    ),
                )
                release()
                if layer.parent:
                    await layer.parent_done.wait()
                await Unpacker(self.cd, self.snapshotter, self.progress).apply(
                    desc, layer.diff_id, layer.chain, layer.parent
                )
        finally:
            release()
        done.set()

    async def _stream_layer(self, layer: _Layer, downloaded: Callable[[], None]) -> None:
        """One pass: the bytes go from the registry through verification and
        decompression into the layer's snapshot (and into the content store only when
        `discard_unpacked_layers` is off)."""
        unpacker = StreamedUnpacker(self.cd, self.snapshotter, self.progress)
        desc = layer.desc
        async with unpacker.stream(
            desc, layer.diff_id, layer.chain, layer.parent, layer.parent_done
        ) as stream:
            if stream is None:
                return
            if self.puller.discard_unpacked_layers:
                await self._fetch_into(desc, layer.urls, stream, None)
            else:
                # one ingest per chain: two chains may share a blob and unpack at once
                ref = f"{_ingest_ref(desc)}-{layer.chain.removeprefix('sha256:')[:12]}"
                async with self.cd.content.writer(ref, desc.size, desc.digest) as writer:
                    writer.offset = 0  # the unpack starts at the first byte, so does the blob
                    await self._fetch_into(desc, layer.urls, stream, writer)
                    await self._commit_blob(
                        writer,
                        desc,
                        self._with_source({}, {labels.UNCOMPRESSED: layer.diff_id}),
                    )
            downloaded()
            self.puller.downloads += 1
            self.log.info("layer downloaded", layer=desc.digest, size=desc.size)

    async def _fetch_into(
        self,
        desc: Descriptor,
        urls: tuple[str, ...],
        stream: LayerStream,
        writer: ContentWriter | None,
    ) -> None:
        """Feed the blob to `stream` as it arrives (in the thread that reads it), resuming
        a broken download where it stopped."""
        progress = self.progress

        def sink(chunk: bytes) -> None:
            if writer is not None:  # first: a write that fails leaves the stream as it was
                anyio.from_thread.run(writer.write, chunk)
            stream.feed(chunk)
            progress.add(desc.digest, len(chunk))

        for attempt in range(_CHUNK_RETRIES + 1):
            try:
                await self.repo.stream_blob(desc, stream.received, urls, sink)
                if stream.received == desc.size:
                    return
                raise Unavailable(
                    f"layer {desc.digest} of {self.repo.ref}: download ended at "
                    f"{stream.received} of {desc.size} bytes"
                )
            except Unavailable as err:
                if attempt == _CHUNK_RETRIES:
                    raise
                self.log.warning(
                    "layer download broke off; resuming",
                    layer=desc.digest,
                    offset=stream.received,
                    error=err.message,
                )
                await anyio.sleep(0.5 * (attempt + 1))

    async def _download_blob(
        self, desc: Descriptor, urls: tuple[str, ...], blob_labels: dict[str, str]
    ) -> None:
        info = await self.cd.content.info(desc.digest)
        if info is not None:
            await self.cd.content.set_labels(
                desc.digest, self._with_source(info.labels, blob_labels)
            )
            return
        ref = _ingest_ref(desc)
        for attempt in range(_CHUNK_RETRIES + 1):
            try:
                await self._write_blob(desc, urls, ref, self._with_source({}, blob_labels))
                break
            except Unavailable as err:
                if attempt == _CHUNK_RETRIES:
                    raise
                self.log.warning(
                    "layer download broke off; resuming", layer=desc.digest, error=err.message
                )
                await anyio.sleep(0.5 * (attempt + 1))
        self.puller.downloads += 1
        self.log.info("layer downloaded", layer=desc.digest, size=desc.size)

    async def _write_blob(
        self, desc: Descriptor, urls: tuple[str, ...], ref: str, blob_labels: dict[str, str]
    ) -> None:
        cd, progress = self.cd, self.progress
        async with cd.content.writer(ref, desc.size, desc.digest) as writer:
            if writer.offset > desc.size:
                writer.offset = 0
            progress.done[desc.digest] = writer.offset
            async for chunk in self.repo.fetch_blob(desc, writer.offset, urls):
                if writer.offset + len(chunk) > desc.size:
                    await cd.content.abort(ref)
                    raise DataLoss(
                        f"layer {desc.digest} of {self.repo.ref}: registry sent more than "
                        f"{desc.size} bytes"
                    )
                await writer.write(chunk)
                progress.add(desc.digest, len(chunk))
            if writer.offset != desc.size:
                raise Unavailable(
                    f"layer {desc.digest} of {self.repo.ref}: download ended at "
                    f"{writer.offset} of {desc.size} bytes"
                )
            await self._commit_blob(writer, desc, blob_labels)

    async def _commit_blob(
        self, writer: ContentWriter, desc: Descriptor, blob_labels: dict[str, str]
    ) -> None:
        """containerd verifies size and digest at commit (the whole blob, resumed or not);
        a blob that fails is aborted, so no later pull resumes it."""
        try:
            await writer.commit(blob_labels)
        except FailedPrecondition as err:
            await self.cd.content.abort(writer.ref)
            raise DataLoss(f"layer {desc.digest} of {self.repo.ref}: {err.message}") from None


def _check_layers(manifest: Manifest, config: ImageConfig) -> None:
    if len(manifest.layers) != len(config.diff_ids):
        raise DataLoss(
            f"image manifest has {len(manifest.layers)} layers but its config "
            f"{len(config.diff_ids)} diff ids"
        )


def _ingest_ref(desc: Descriptor) -> str:
    """Deterministic, so that a later pull of the same blob resumes this ingest."""
    return f"criproxy-pull-{desc.digest}"


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()
