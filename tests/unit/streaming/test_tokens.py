from __future__ import annotations

import pytest

from criproxy.errors import ResourceExhausted
from criproxy.streaming.tokens import TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_single_use_and_bound_to_its_kind_and_request() -> None:
    store = TokenStore(clock=Clock())
    token = store.issue("exec", "request-1")
    assert len(token) >= 20  # 16 random bytes, URL-safe
    assert store.take("attach", token) is None  # another kind of session
    assert store.take("exec", token) == "request-1"
    assert store.take("exec", token) is None  # used
    assert store.take("exec", "guessed") is None


def test_a_token_expires_after_a_minute() -> None:
    clock = Clock()
    store = TokenStore(clock=clock)
    early, late = store.issue("exec", 1), None
    clock.now += 59.9
    late = store.issue("exec", 2)
    clock.now += 0.2
    assert store.take("exec", early) is None
    assert store.take("exec", late) == 2


def test_at_most_1000_in_flight_and_expired_ones_make_room() -> None:
    clock = Clock()
    store = TokenStore(clock=clock)
    for i in range(1000):
        store.issue("portforward", i)
    with pytest.raises(ResourceExhausted, match="1000 streaming requests are in flight"):
        store.issue("exec", "one too many")
    clock.now += 61
    assert len(store) == 0
    store.issue("exec", "fits again")


def test_tokens_are_distinct() -> None:
    store = TokenStore()
    assert len({store.issue("exec", i) for i in range(500)}) == 500
