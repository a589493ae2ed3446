"""The image index kept current from containerd's image events."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from criproxy.config import Config
from criproxy.containerd import Event, ImageEvent
from criproxy.images.service import ImageService
from tests.unit.images.test_store import ID1, content

pytestmark = pytest.mark.anyio
NAME = "docker.io/library/busybox:1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Records:
    """containerd's image records; `get` waits for `release` (an event read slowly)."""

    def __init__(self) -> None:
        self.names = {NAME}
        self.reading = anyio.Event()
        self.release = anyio.Event()

    async def get(self, name: str) -> Any:
        record = SimpleNamespace(name=name, labels={}) if name in self.names else None
        self.reading.set()
        await self.release.wait()
        return record

    async def delete(self, name: str, *, sync: bool = False) -> None:
        self.names.discard(name)


class _Containerd:
    namespace = "k8s.io"

    def __init__(self) -> None:
        self.images = _Records()


async def test_a_remove_that_returned_while_a_create_event_was_read_stands() -> None:
    containerd = _Containerd()
    service = ImageService(Config(), containerd)  # type: ignore[arg-type]

    async def read(record: Any) -> Any:
        return content(ID1)

    service.content_or_none = read  # type: ignore[method-assign]
    service.store.add(NAME, content(ID1))  # the pull added it
    event = Event("/images/create", "k8s.io", 0, ImageEvent("create", NAME))
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.on_event, event)
        await containerd.images.reading.wait()  # the event's record was read: it exists
        await service.remove(NAME)
        assert service.status(NAME) is None
        containerd.images.release.set()
    assert service.status(NAME) is None  # the event did not bring it back


async def test_a_create_event_without_a_removal_adds_the_image() -> None:
    containerd = _Containerd()
    service = ImageService(Config(), containerd)  # type: ignore[arg-type]

    async def read(record: Any) -> Any:
        return content(ID1)

    service.content_or_none = read  # type: ignore[method-assign]
    containerd.images.release.set()
    await service.on_event(Event("/images/create", "k8s.io", 0, ImageEvent("create", NAME)))
    found = service.status(NAME)
    assert found is not None and found.id == ID1
