"""containerd's content store: blob info and labels, reads, and resumable streamed writes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2

from criproxy._generated.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from criproxy.containerd.errors import from_rpc_error
from criproxy.errors import AlreadyExists, NotFound

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Mapping

    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: dict[str, str]


class ContentWriter:
    """One ingest (`ref`) in the content store: resumable, pipelined, verified at commit.

    The ingest survives a broken connection or a crash: reopening the same ref reports how
    much is already written, and writing continues from there. Writes do not wait for each
    acknowledgement (up to `_WINDOW` are in flight), so a blob streams at the speed of the
    socket rather than one round trip per chunk.
    """

    _WINDOW = 32

    def __init__(self, channel: Channel, ref: str, total: int, expected: str) -> None:
        self._channel = channel
        self.ref = ref
        self.total = total
        self.expected = expected
        self.offset = 0
        self._pending = 0
        self._call: grpc.aio.StreamStreamCall[Any, Any] | None = None

    async def __aenter__(self) -> ContentWriter:
        stub = content_pb2_grpc.ContentStub(self._channel.grpc)
        self._call = stub.Write(metadata=self._channel.metadata)
        await self._write(
            content_pb2.WriteContentRequest(
                action=content_pb2.STAT, ref=self.ref, total=self.total, expected=self.expected
            )
        )
        self.offset = (await self._read()).offset
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _write(self, request: content_pb2.WriteContentRequest) -> None:
        assert self._call is not None
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err.code(), err.details(), f"write {self.ref}") from None
        self._pending += 1

    async def _read(self) -> Any:
        assert self._call is not None
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err.code(), err.details(), f"write {self.ref}") from None
        if resp is grpc.aio.EOF:
            # The server ended the stream: its status says why.
            code = await self._call.code()
            details = await self._call.details()
            raise from_rpc_error(code, details, f"write {self.ref}")
        self._pending -= 1
        return resp

    async def write(self, data: bytes) -> None:
        """Append at the current offset (always sent, so a resumed ingest never truncates;
        an offset set back to 0 restarts the ingest from scratch)."""
        await self._write(
            content_pb2.WriteContentRequest(
                action=content_pb2.WRITE, ref=self.ref, offset=self.offset, data=data
            )
        )
        self.offset += len(data)
        if self._pending >= self._WINDOW:
            await self._read()

    async def commit(self, labels: Mapping[str, str] | None = None) -> None:
        """Verify size and digest and make the blob visible; content already there is fine."""
        with contextlib.suppress(AlreadyExists):
            await self._write(
                content_pb2.WriteContentRequest(
                    action=content_pb2.COMMIT,
                    ref=self.ref,
                    offset=self.offset,
                    total=self.total,
                    expected=self.expected,
                    labels=dict(labels or {}),
                )
            )
            while self._pending:
                await self._read()
        if self._call is not None:
            await self._call.done_writing()


class ContentService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = content_pb2_grpc.ContentStub(channel.grpc)

    async def info(self, digest: str) -> ContentInfo | None:
        """The blob's info, or None when the store does not have it."""
        try:
            resp = await self._channel.unary(
                self._stub.Info, content_pb2.InfoRequest(digest=digest), operation=f"info {digest}"
            )
        except NotFound:
            return None
        return ContentInfo(resp.info.digest, resp.info.size, dict(resp.info.labels))

    async def set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Add or replace (empty value: remove) the given labels, leaving the others alone."""
        if not labels:
            return
        await self._channel.unary(
            self._stub.Update,
            content_pb2.UpdateRequest(
                info=content_pb2.Info(digest=digest, labels=dict(labels)),
                update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
            ),
            operation=f"label {digest}",
        )

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        async for chunk in self._channel.stream(
            self._stub.Read, request, operation=f"read {digest}", timeout=None
        ):
            yield chunk.data

    async def read_all(self, digest: str) -> bytes:
        """A small blob (manifest, config) in one piece."""
        return b"".join([chunk async for chunk in self.read(digest)])

    def writer(self, ref: str, total: int, expected: str) -> ContentWriter:
        return ContentWriter(self._channel, ref, total, expected)

    async def abort(self, ref: str) -> None:
        """Drop an ingest and what it wrote; a missing ingest is fine."""
        with contextlib.suppress(NotFound):
            await self._channel.unary(
                self._stub.Abort, content_pb2.AbortRequest(ref=ref), operation=f"abort {ref}"
            )

    async def delete(self, digest: str) -> None:
        with contextlib.suppress(NotFound):
            await self._channel.unary(
                self._stub.Delete,
                content_pb2.DeleteContentRequest(digest=digest),
                operation=f"delete {digest}",
            )

    async def list(self, *filters: str) -> builtins.list[ContentInfo]:
        out: builtins.list[ContentInfo] = []
        request = content_pb2.ListContentRequest(filters=filters)
        async for page in self._channel.stream(self._stub.List, request, operation="list content"):
            out.extend(ContentInfo(i.digest, i.size, dict(i.labels)) for i in page.info)
        return out

    async def ingests(self, *filters: str) -> builtins.list[str]:
        """Refs of the ingests in progress (for tests and clean-up)."""
        resp = await self._channel.unary(
            self._stub.ListStatuses,
            content_pb2.ListStatusesRequest(filters=filters),
            operation="list ingests",
        )
        return [s.ref for s in resp.statuses]
