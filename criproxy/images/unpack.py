"""Unpacking layers into snapshots by chain id: Prepare, diff Apply, Commit.

Shared by pulls and archive imports. Concurrent unpacks of the same chain are safe:
whoever commits first wins and the other finds the chain there.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog

from criproxy.errors import AlreadyExists, CriproxyError, DataLoss, FailedPrecondition, Unavailable
from criproxy.images import extract, labels
from criproxy.images.extract import Extractor
from criproxy.images.layerstream import LayerStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from criproxy.containerd import Containerd
    from criproxy.containerd.types import Descriptor, Mount

log = structlog.get_logger("criproxy.images.unpack")


class ProgressSink(Protocol):
    unpacking: int

    def touch(self) -> None: ...


class Unpacker:
    def __init__(self, cd: Containerd, snapshotter: str, progress: ProgressSink) -> None:
        self.cd = cd
        self.snapshotter = snapshotter
        self.progress = progress

    async def first_missing(self, chains: list[str]) -> int:
        """The first layer whose chain is not unpacked yet (len(chains) when all are)."""
        for i, chain in enumerate(chains):
            if await self.cd.snapshots.stat(self.snapshotter, chain) is None:
                return i
        return len(chains)

    async def apply(self, layer: Descriptor, diff_id: str, chain: str, parent: str) -> None:
        """Prepare, apply and commit one layer as snapshot `chain` on top of `parent`."""
        cd, progress = self.cd, self.progress
        snapshot_labels = {labels.SNAPSHOT_REF: chain}
        for _attempt in range(3):
            key = _extract_key(chain)
            try:
                mounts = await cd.snapshots.prepare(self.snapshotter, key, parent, snapshot_labels)
                break
            except AlreadyExists:
                # The chain was committed meanwhile (another pull): nothing to do.
                if await cd.snapshots.stat(self.snapshotter, chain) is not None:
                    return
        else:
            raise Unavailable(f"unable to prepare extraction snapshot for {chain}")
        committed = False
        progress.unpacking += 1
        try:
            if await cd.content.info(layer.digest) is None:
                raise FailedPrecondition(
                    f"layer {layer.digest} ({layer.media_type}) is not available to unpack"
                )
            applied = await cd.diff.apply(layer, mounts)
            if applied.digest != diff_id:
                raise DataLoss(
                    f"wrong diff id {applied.digest} calculated on extraction of layer "
                    f"{layer.digest}; the image config says {diff_id}"
                )
            try:
                await cd.snapshots.commit(self.snapshotter, chain, key, snapshot_labels)
                committed = True
            except AlreadyExists:
                pass  # another pull committed the same chain meanwhile; this key is removed
        finally:
            progress.unpacking -= 1
            progress.touch()
            if not committed:
                with anyio.CancelScope(shield=True):
                    try:
                        await cd.snapshots.remove(self.snapshotter, key)
                    except CriproxyError as err:
                        log.warning("could not remove unpack snapshot", key=key, error=err.message)


STREAMING_SNAPSHOTTERS = ("overlayfs", "native")


@dataclass
class _Target:
    key: str
    directory: str
    lowerdirs: tuple[str, ...]


def _target(mounts: list[Mount], key: str) -> _Target:
    """Where a prepared snapshot's files go: an overlay's upper directory or a bind source."""
    if len(mounts) == 1:
        mount = mounts[0]
        if mount.type == "bind":
            return _Target(key, mount.source, ())
        if mount.type == "overlay":
            opts = dict(o.split("=", 1) for o in mount.options if "=" in o)
            if "upperdir" in opts:
                lowers = tuple(d for d in opts.get("lowerdir", "").split(":") if d)
                return _Target(key, opts["upperdir"], lowers)
    raise FailedPrecondition(f"snapshot {key} has mounts criproxy cannot unpack into: {mounts}")


class StreamedUnpacker(Unpacker):
    """Unpacks layers as they download, straight into their snapshots' directories.

    overlayfs: each layer is unpacked into a snapshot of its own right away (several at
    once), because an upper directory does not depend on the layers below; once its
    parent is committed, its entries move into the real, parented snapshot (a rename per
    top-level entry) and it is committed. native: a snapshot starts as a copy of its
    parent, so each layer waits for its parent and is unpacked into that copy.
    """

    def __init__(self, cd: Containerd, snapshotter: str, progress: ProgressSink) -> None:
        super().__init__(cd, snapshotter, progress)
        self.overlay = snapshotter == "overlayfs"

    @staticmethod
    def available(snapshotter: str) -> bool:
        return snapshotter in STREAMING_SNAPSHOTTERS and extract.supported()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Unpacking work in flight counts as pull progress."""
        self.progress.unpacking += 1
        try:
            yield
        finally:
            self.progress.unpacking -= 1
            self.progress.touch()

    @contextlib.asynccontextmanager
    async def stream(
        self, layer: Descriptor, diff_id: str, chain: str, parent: str, parent_done: anyio.Event
    ) -> AsyncIterator[LayerStream | None]:
        """A `LayerStream` to feed the layer's bytes to; on a clean exit the layer is
        verified and committed as `chain`. None when the chain is there already."""
        if not self.overlay:
            await parent_done.wait()
        if await self.cd.snapshots.stat(self.snapshotter, chain) is not None:
            yield None
            return
        staged = bool(parent) and self.overlay and not parent_done.is_set()
        made: list[str] = []  # snapshot keys to remove unless committed
        extractor: Extractor | None = None
        try:
            key = _extract_key(chain)
            mounts = await self.cd.snapshots.prepare(
                self.snapshotter,
                key,
                "" if staged else parent,
                {} if staged else {labels.SNAPSHOT_REF: chain},
            )
            made.append(key)
            first = _target(mounts, key)
            extractor = await anyio.to_thread.run_sync(
                Extractor, first.directory, "overlay" if self.overlay else "remove"
            )
            stream = LayerStream(layer, diff_id, extractor)
            yield stream
            with self._busy():
                await anyio.to_thread.run_sync(stream.finish)
            if staged:
                await parent_done.wait()  # not progress: the parent's own download is
            with self._busy():
                await self._commit(extractor, first, chain, parent, staged=staged, made=made)
        finally:
            if extractor is not None:
                extractor.close()
            with anyio.CancelScope(shield=True):
                for key in made:
                    try:
                        await self.cd.snapshots.remove(self.snapshotter, key)
                    except CriproxyError as err:
                        log.warning("could not remove unpack snapshot", key=key, error=err.message)

    async def _commit(
        self,
        extractor: Extractor,
        unpacked: _Target,
        chain: str,
        parent: str,
        *,
        staged: bool,
        made: list[str],
    ) -> None:
        """Commit a verified layer as `chain`; one unpacked on its own (`staged`) moves
        into a snapshot on its parent first."""
        cd, snapshotter = self.cd, self.snapshotter
        snapshot_labels = {labels.SNAPSHOT_REF: chain}
        final = unpacked
        if staged:
            if await cd.snapshots.stat(snapshotter, chain) is not None:
                return  # another pull committed it meanwhile
            key = _extract_key(chain)
            mounts = await cd.snapshots.prepare(snapshotter, key, parent, snapshot_labels)
            made.append(key)
            final = _target(mounts, key)
            await anyio.to_thread.run_sync(
                extract.move_entries, unpacked.directory, final.directory
            )
        await anyio.to_thread.run_sync(extractor.finish, final.directory, final.lowerdirs)
        try:
            await cd.snapshots.commit(snapshotter, chain, final.key, snapshot_labels)
        except AlreadyExists:
            return  # another pull committed the chain meanwhile; this key is removed
        made.remove(final.key)


def _extract_key(chain: str) -> str:
    return f"extract-{time.time_ns()}-{secrets.token_hex(4)} {chain}"
