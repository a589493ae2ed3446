"""GetContainerEvents fan-out: every subscriber gets every event; a stuck one is dropped."""

from __future__ import annotations

import anyio
import pytest

from criproxy.containers.events import EventHub

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub(queue_size=10)
    a, b = hub.subscribe(), hub.subscribe()
    for kind in ("created", "started", "stopped"):
        hub.publish(kind, "c1", None, ())  # type: ignore[arg-type]
    for stream in (a, b):
        got = [(await stream.receive()).type for _ in range(3)]
        assert got == ["created", "started", "stopped"]


async def test_a_subscriber_that_stops_reading_is_dropped_without_blocking() -> None:
    hub = EventHub(queue_size=2)
    stuck, reader = hub.subscribe(), hub.subscribe()
    with anyio.fail_after(1):  # publishing never waits
        for i in range(5):
            hub.publish("created", f"c{i}", None, ())
            await reader.receive()
    assert hub.subscribers == 1
    received = [e.container_id async for e in stuck]  # its stream ends after what it had
    assert received == ["c0", "c1"]


async def test_a_closed_subscriber_is_forgotten() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    hub.unsubscribe(stream)
    hub.publish("deleted", "c", None, ())
    assert hub.subscribers == 0
