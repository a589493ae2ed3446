"""containerd's event stream, decoded into the project's event types.

containerd 1.6 sends `Any.type_url` as the bare message name (no `type.googleapis.com/`
prefix), so payloads are decoded by the last path element of the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy._generated.containerd.events import image_pb2
from criproxy._generated.containerd.services.events.v1 import events_pb2, events_pb2_grpc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from google.protobuf.any_pb2 import Any

    from criproxy.containerd.client import Channel


@dataclass(frozen=True)
class ImageEvent:
    """An image record was created, updated or deleted (by anyone: criproxy, ctr, ...)."""

    action: str
    """`create`, `update` or `delete`."""
    name: str


@dataclass(frozen=True)
class Event:
    topic: str
    namespace: str
    timestamp_ns: int
    payload: ImageEvent | None
    """None for events criproxy does not decode (yet)."""


def _type_name(payload: Any) -> str:
    return payload.type_url.rsplit("/", 1)[-1]


def _decode(payload: Any) -> ImageEvent | None:
    name = _type_name(payload)
    if name == "containerd.services.images.v1.ImageCreate":
        return ImageEvent("create", image_pb2.ImageCreate.FromString(payload.value).name)
    if name == "containerd.services.images.v1.ImageUpdate":
        return ImageEvent("update", image_pb2.ImageUpdate.FromString(payload.value).name)
    if name == "containerd.services.images.v1.ImageDelete":
        return ImageEvent("delete", image_pb2.ImageDelete.FromString(payload.value).name)
    return None


class EventsService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = events_pb2_grpc.EventsStub(channel.grpc)

    async def subscribe(self, *filters: str) -> AsyncIterator[Event]:
        """Events from now on, until the stream breaks (then the caller resubscribes)."""
        request = events_pb2.SubscribeRequest(filters=filters)
        async for envelope in self._channel.stream(
            self._stub.Subscribe, request, operation="subscribe to events", timeout=None
        ):
            yield Event(
                envelope.topic,
                envelope.namespace,
                envelope.timestamp.ToNanoseconds(),
                _decode(envelope.event),
            )
