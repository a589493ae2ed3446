"""Single-use tokens for streaming URLs: random, bound to one request, short-lived.

As the kubelet's streaming request cache: a token expires a minute after it was handed
out, is gone once used, and at most 1000 are in flight (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from criproxy.errors import ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import Callable

TTL = 60.0
MAX_IN_FLIGHT = 1000
TOKEN_BYTES = 16


@dataclass(frozen=True)
class _Entry:
    kind: str
    request: object
    expires: float


class TokenStore:
    def __init__(
        self,
        ttl: float = TTL,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_in_flight
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def issue(self, kind: str, request: object) -> str:
        self._expire()
        if len(self._entries) >= self._max:
            raise ResourceExhausted(
                f"{self._max} streaming requests are in flight already; retry in a minute"
            )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = _Entry(kind, request, self._clock() + self._ttl)
        return token

    def take(self, kind: str, token: str) -> object | None:
        """The request a token was issued for, once; None when unknown, used or expired
        (or issued for another kind of session)."""
        self._expire()
        entry = self._entries.get(token)
        if entry is None or entry.kind != kind:
            return None
        del self._entries[token]
        return entry.request

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[token]
