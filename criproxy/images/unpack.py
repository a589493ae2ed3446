"""Unpacking layers into snapshots by chain id: Prepare, diff Apply, Commit.

Shared by pulls and archive imports. Concurrent unpacks of the same chain are safe:
whoever commits first wins and the other finds the chain there.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog

from criproxy.errors import AlreadyExists, CriproxyError, DataLoss, FailedPrecondition, Unavailable
from criproxy.images import labels

if TYPE_CHECKING:
    from criproxy.containerd import Containerd
    from criproxy.containerd.types import Descriptor

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
            key = f"extract-{time.time_ns()}-{secrets.token_hex(4)} {chain}"
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
            # AlreadyExists: another pull committed the same chain meanwhile; that is fine.
            with contextlib.suppress(AlreadyExists):
                await cd.snapshots.commit(self.snapshotter, chain, key, snapshot_labels)
            committed = True
        finally:
            progress.unpacking -= 1
            progress.touch()
            if not committed:
                with anyio.CancelScope(shield=True):
                    try:
                        await cd.snapshots.remove(self.snapshotter, key)
                    except CriproxyError as err:
                        log.warning("could not remove unpack snapshot", key=key, error=err.message)
