"""containerd's leases: what keeps content and snapshots from GC while a pull is under way."""

from __future__ import annotations

import contextlib
import datetime
import secrets
from typing import TYPE_CHECKING

from criproxy._generated.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from criproxy.errors import NotFound

if TYPE_CHECKING:
    import builtins

    from criproxy.containerd.client import Channel

EXPIRE_LABEL = "containerd.io/gc.expire"


class LeasesService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = leases_pb2_grpc.LeasesStub(channel.grpc)

    async def create(self, prefix: str, expire_after: datetime.timedelta) -> str:
        """A new lease that containerd's GC drops by itself after `expire_after`.

        The expiry is the safety net: a lease left by a killed process does not pin
        content for ever.
        """
        lease_id = f"{prefix}-{secrets.token_hex(8)}"
        expire = datetime.datetime.now(datetime.UTC) + expire_after
        labels = {EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ")}  # RFC 3339
        await self._channel.unary(
            self._stub.Create,
            leases_pb2.CreateRequest(id=lease_id, labels=labels),
            operation=f"create lease {lease_id}",
        )
        return lease_id

    async def delete(self, lease_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self._channel.unary(
                self._stub.Delete,
                leases_pb2.DeleteRequest(id=lease_id),
                operation=f"delete lease {lease_id}",
            )

    async def list(self, *filters: str) -> builtins.list[str]:
        resp = await self._channel.unary(
            self._stub.List, leases_pb2.ListRequest(filters=filters), operation="list leases"
        )
        return [lease.id for lease in resp.leases]
