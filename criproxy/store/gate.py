"""The "recovered" gate: until the first recovery, memory is not the truth."""

from __future__ import annotations

import anyio

from criproxy.errors import Unavailable


class RecoveredGate:
    """Opened once every store has been rebuilt from containerd.

    Answering from memory before that would make the kubelet think pods are gone, and a
    retried name would get a second pod: queries raise UNAVAILABLE until then.
    """

    def __init__(self) -> None:
        self._open = anyio.Event()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait(self) -> None:
        await self._open.wait()

    def require(self) -> None:
        if not self._open.is_set():
            raise Unavailable(
                "criproxy is still loading pods and containers from containerd; retry"
            )
