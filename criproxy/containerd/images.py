"""containerd's image records: a name, a target descriptor, labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf import field_mask_pb2

from criproxy._generated.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from criproxy.containerd.types import Descriptor
from criproxy.errors import AlreadyExists, NotFound

if TYPE_CHECKING:
    import builtins

    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class ImageRecord:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at_ns: int = 0

    def to_proto(self) -> images_pb2.Image:
        return images_pb2.Image(name=self.name, target=self.target.to_proto(), labels=self.labels)


def _record(msg: images_pb2.Image) -> ImageRecord:
    return ImageRecord(
        msg.name,
        Descriptor.from_proto(msg.target),
        dict(msg.labels),
        msg.created_at.ToNanoseconds(),
    )


class ImagesService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = images_pb2_grpc.ImagesStub(channel.grpc)

    async def get(self, name: str) -> ImageRecord | None:
        try:
            resp = await self._channel.unary(
                self._stub.Get, images_pb2.GetImageRequest(name=name), operation=f"get image {name}"
            )
        except NotFound:
            return None
        return _record(resp.image)

    async def list(self, *filters: str) -> builtins.list[ImageRecord]:
        resp = await self._channel.unary(
            self._stub.List, images_pb2.ListImagesRequest(filters=filters), operation="list images"
        )
        return [_record(image) for image in resp.images]

    async def put(self, record: ImageRecord) -> ImageRecord:
        """Create the record, or update target and labels of an existing one of that name
        (a new name, the common case, costs one round trip)."""
        try:
            resp = await self._channel.unary(
                self._stub.Create,
                images_pb2.CreateImageRequest(image=record.to_proto()),
                operation=f"create image {record.name}",
            )
            return _record(resp.image)
        except AlreadyExists:
            pass  # there is one: update it instead
        resp2 = await self._channel.unary(
            self._stub.Update,
            images_pb2.UpdateImageRequest(
                image=record.to_proto(),
                update_mask=field_mask_pb2.FieldMask(paths=["target", "labels"]),
            ),
            operation=f"update image {record.name}",
        )
        return _record(resp2.image)

    async def delete(self, name: str, *, sync: bool = False) -> bool:
        """Delete one record; False when there was none."""
        try:
            await self._channel.unary(
                self._stub.Delete,
                images_pb2.DeleteImageRequest(name=name, sync=sync),
                operation=f"delete image {name}",
            )
        except NotFound:
            return False
        return True
