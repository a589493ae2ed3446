"""Mutations of a CRI request message, for tests that change one field of a valid request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def set_field(path: str, value: object) -> Callable[[Any], None]:
    """A mutation that sets the field at the dotted `path` (below the message it is given)."""

    def mutate(message: Any) -> None:
        *parents, name = path.split(".")
        for parent in parents:
            message = getattr(message, parent)
        setattr(message, name, value)

    return mutate
