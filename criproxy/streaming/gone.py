"""A client of a streaming session may go at any moment: what that looks like when we
write to it, and a write that must not fail the session's clean-up."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable

CLIENT_GONE = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # ConnectionError included
)


async def quietly(step: Awaitable[None]) -> None:
    """A write or close towards a client that may have gone already."""
    with contextlib.suppress(*CLIENT_GONE):
        await step
