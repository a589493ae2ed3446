"""containerd's event stream, decoded into the project's event types.

containerd 1.6 sends `Any.type_url` as the bare message name (no `type.googleapis.com/`
prefix), so payloads are decoded by the last path element of the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy._generated.containerd.events import image_pb2, task_pb2
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
class TaskEvent:
    """A task (or exec process) changed: `create`, `start`, `exit`, `oom`, `delete`."""

    action: str
    container_id: str
    process_id: str = ""
    """The exec id, or the container id for the task's main process."""
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int = 0

    @property
    def main_process(self) -> bool:
        return not self.process_id or self.process_id == self.container_id


@dataclass(frozen=True)
class Event:
    topic: str
    namespace: str
    timestamp_ns: int
    payload: ImageEvent | TaskEvent | None
    """None for events criproxy does not decode (yet)."""


def _type_name(payload: Any) -> str:
    return payload.type_url.rsplit("/", 1)[-1]


def _decode_task(name: str, value: bytes) -> TaskEvent | None:
    if name == "containerd.events.TaskExit":
        e = task_pb2.TaskExit.FromString(value)
        return TaskEvent(
            "exit", e.container_id, e.id, e.pid, e.exit_status, e.exited_at.ToNanoseconds()
        )
    if name == "containerd.events.TaskStart":
        s = task_pb2.TaskStart.FromString(value)
        return TaskEvent("start", s.container_id, pid=s.pid)
    if name == "containerd.events.TaskCreate":
        c = task_pb2.TaskCreate.FromString(value)
        return TaskEvent("create", c.container_id, pid=c.pid)
    if name == "containerd.events.TaskOOM":
        return TaskEvent("oom", task_pb2.TaskOOM.FromString(value).container_id)
    if name == "containerd.events.TaskDelete":
        d = task_pb2.TaskDelete.FromString(value)
        return TaskEvent(
            "delete", d.container_id, d.id, d.pid, d.exit_status, d.exited_at.ToNanoseconds()
        )
    return None


def _decode(payload: Any) -> ImageEvent | TaskEvent | None:
    name = _type_name(payload)
    if name.startswith("containerd.events.Task"):
        return _decode_task(name, payload.value)
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
