"""What the servicer tests share: the asyncio backend and a domain that must not be reached."""

from __future__ import annotations

from typing import Any

import pytest

from criproxy import errors


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Unreachable:
    """A domain object no call of a test should get to: any use answers UNAVAILABLE."""

    def __getattr__(self, name: str) -> Any:
        raise errors.Unavailable(f"the domain is not part of this test (wanted {name})")


@pytest.fixture
def unreachable() -> Any:
    return Unreachable()
