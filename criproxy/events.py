"""The one containerd event subscription of criproxy, and its dispatcher.

At start and after every reconnect: subscribe, then run the recovery (`criproxy.recovery`:
it rebuilds the in-memory stores from containerd, or reconciles them), then handle the
events that arrived meanwhile and after. Events are applied idempotently, so one that
recovery already saw does no harm, and none that happens after the subscription is missed.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.errors import CriproxyError

if TYPE_CHECKING:
    from anyio.abc import ObjectSendStream

    from criproxy.containerd import Containerd, Event

log = structlog.get_logger("criproxy.events")

RETRY_DELAY = 1.0
_SUBSCRIBE_SETTLE = 0.05

Recover = Callable[[], Awaitable[None]]
Handler = Callable[["Event"], Awaitable[None]]


class _StreamEnded(Exception):
    pass


_FILTERS = ('topic=="/tasks/exit"', 'topic=="/tasks/oom"', 'topic~="^/images/"')
"""The events criproxy's handlers act on: task exits and OOMs, image records."""


@dataclass
class EventLoop:
    containerd: Containerd
    recover: list[Recover] = field(default_factory=list)
    handlers: list[Handler] = field(default_factory=list)
    subscriptions: int = 0
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set once the first recovery has run (the stores are filled)."""

    async def run(self) -> None:
        """Runs until cancelled; resubscribes (and recovers) whenever the stream breaks."""
        while True:
            try:
                await self._subscribe_once()
            except* CriproxyError as group:
                errors = "; ".join(str(e) for e in group.exceptions)
                log.warning("containerd event stream unavailable", error=errors)
            except* _StreamEnded:
                log.warning("containerd event stream ended; resubscribing")
            await anyio.sleep(RETRY_DELAY)

    async def _subscribe_once(self) -> None:
        send, receive = anyio.create_memory_object_stream["Event"](math.inf)
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(self._read, send)
            await anyio.sleep(_SUBSCRIBE_SETTLE)  # let the Subscribe call reach containerd
            for hook in self.recover:
                await hook()
            self.subscriptions += 1
            self.ready.set()
            log.info("subscribed to containerd events", subscriptions=self.subscriptions)
            async for event in receive:
                for handler in self.handlers:
                    try:
                        await handler(event)
                    except Exception as err:  # one bad event must not stop the stream
                        log.warning(
                            "event handler failed", topic=event.topic, error=str(err), exc_info=err
                        )
            raise _StreamEnded

    async def _read(self, send: ObjectSendStream[Event]) -> None:
        namespace = self.containerd.namespace
        async with send:
            # Only what a handler acts on: every pod and container also makes task create,
            # start and delete events, and snapshot, container and lease events, that would
            # cost containerd a send and criproxy a decode and a dispatch each for nothing.
            topics = [f'namespace=="{namespace}",{match}' for match in _FILTERS]
            async for event in self.containerd.events.subscribe(*topics):
                await send.send(event)
