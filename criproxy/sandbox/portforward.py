"""PortForward's dial: a connection to a port on the pod's loopback, from inside the pod's
network namespace (a host-network pod's is the host's)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from criproxy.errors import Unavailable
from criproxy.network.netns import dial_in_netns
from criproxy.network.sockets import SocketByteStream

if TYPE_CHECKING:
    from criproxy.sandbox.deps import PodDeps

DIAL_TIMEOUT = 10.0


async def dial(deps: PodDeps, sandbox_id: str, port: int) -> SocketByteStream:
    sandbox = deps.store.ready(sandbox_id)
    netns = Path(sandbox.netns) if sandbox.netns and not sandbox.config.host_network else None
    try:
        sock = await anyio.to_thread.run_sync(
            functools.partial(dial_in_netns, netns, port, DIAL_TIMEOUT)
        )
    except OSError as err:
        raise Unavailable(
            f"cannot connect to port {port} in pod sandbox {sandbox.id}: {err.strerror or err}"
        ) from None
    return SocketByteStream(sock)
