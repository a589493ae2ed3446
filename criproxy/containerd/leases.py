"""containerd's leases: what keeps content and snapshots from GC while work is under way.

Every lease carries the identity of the process that made it (boot, pid, start time), so
that a later process can tell the leases of a process that no longer runs (killed in
the middle of a pull or a pod set-up) and delete them at once instead of letting them
hold snapshots and content until they expire.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from criproxy._generated.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from criproxy.errors import NotFound
from criproxy.host import process_start_ticks

if TYPE_CHECKING:
    import builtins
    from collections.abc import Mapping

    from criproxy.containerd.client import Channel

EXPIRE_LABEL = "containerd.io/gc.expire"
OWNER_LABEL = "io.criproxy.owner"
"""`<boot id>/<pid>/<start time in clock ticks>` of the process that made the lease."""


@dataclass(frozen=True)
class Lease:
    id: str
    labels: Mapping[str, str]

    @property
    def owner(self) -> str:
        return self.labels.get(OWNER_LABEL, "")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start in clock ticks since boot, as text; "" when gone."""
    ticks = process_start_ticks(pid)
    return "" if ticks is None else str(ticks)


@cache
def this_process() -> str:
    """This process's owner label value."""
    pid = os.getpid()
    return f"{_boot_id()}/{pid}/{_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    """Whether the process an owner label names still runs (same boot, pid, start time).

    Blocking (reads /proc)."""
    boot, _, rest = owner.partition("/")
    pid, _, started = rest.partition("/")
    if not pid.isdigit() or boot != _boot_id():
        return False
    return bool(started) and _start_time(int(pid)) == started


class LeasesService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = leases_pb2_grpc.LeasesStub(channel.grpc)

    async def create(self, prefix: str, expire_after: datetime.timedelta) -> str:
        """A new lease of this process that containerd's GC drops by itself after
        `expire_after` (the safety net when no later process deletes it)."""
        lease_id = f"{prefix}-{secrets.token_hex(8)}"
        expire = datetime.datetime.now(datetime.UTC) + expire_after
        labels = {
            EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ"),  # RFC 3339
            OWNER_LABEL: this_process(),
        }
        await self._channel.unary(
            self._stub.Create,
            leases_pb2.CreateRequest(id=lease_id, labels=labels),
            operation=f"create lease {lease_id}",
        )
        return lease_id

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """`sync`: containerd collects what the lease held before it answers."""
        with contextlib.suppress(NotFound):
            await self._channel.unary(
                self._stub.Delete,
                leases_pb2.DeleteRequest(id=lease_id, sync=sync),
                operation=f"delete lease {lease_id}",
            )

    async def list(self, *filters: str) -> builtins.list[Lease]:
        resp = await self._channel.unary(
            self._stub.List, leases_pb2.ListRequest(filters=filters), operation="list leases"
        )
        return [Lease(lease.id, dict(lease.labels)) for lease in resp.leases]
