"""GetContainerEvents: container lifecycle events fanned out to any number of subscribers.

Each subscriber has its own bounded queue. A pod loop publishes without ever waiting: a
subscriber whose queue is full has stopped reading and is dropped (its stream ends), so a
slow client can never hold up a pod.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio
import structlog

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from criproxy.containers.model import Container
    from criproxy.sandbox.model import Sandbox

log = structlog.get_logger("criproxy.containers.events")

EventType = Literal["created", "started", "stopped", "deleted"]
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class ContainerEvent:
    type: EventType
    container_id: str
    created_at_ns: int
    sandbox: Sandbox | None
    containers: tuple[Container, ...]
    """The pod's containers after the change (the deleted one no longer among them)."""


class EventHub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[MemoryObjectSendStream[ContainerEvent]] = set()

    def subscribe(self) -> MemoryObjectReceiveStream[ContainerEvent]:
        send, receive = anyio.create_memory_object_stream[ContainerEvent](self._queue_size)
        self._subscribers.add(send)
        return receive

    def unsubscribe(self, stream: MemoryObjectReceiveStream[ContainerEvent]) -> None:
        stream.close()

    def publish(
        self,
        kind: EventType,
        container_id: str,
        sandbox: Sandbox | None,
        containers: tuple[Container, ...],
    ) -> None:
        event = ContainerEvent(kind, container_id, time.time_ns(), sandbox, containers)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("dropping a container event subscriber that stopped reading")
                send.close()
                self._subscribers.discard(send)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.close()
                self._subscribers.discard(send)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
