"""containerd's container records: what criproxy persists of every sandbox and container."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, field_mask_pb2

from criproxy._generated.containerd.services.containers.v1 import (
    containers_pb2,
    containers_pb2_grpc,
)
from criproxy.containerd.runtime_options import RuncOptions
from criproxy.errors import NotFound

if TYPE_CHECKING:
    import builtins
    from collections.abc import Mapping

    from criproxy.containerd.client import Channel

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    labels: dict[str, str]
    image: str
    runtime: str
    """The shim, e.g. `io.containerd.runc.v2`."""
    runtime_options: RuncOptions | None
    spec: dict[str, Any]
    snapshotter: str
    snapshot_key: str
    extensions: dict[str, bytes] = field(default_factory=dict)
    """criproxy's own metadata (JSON), by extension name."""
    created_at_ns: int = 0

    def to_proto(self) -> containers_pb2.Container:
        msg = containers_pb2.Container(
            id=self.id,
            labels=self.labels,
            image=self.image,
            snapshotter=self.snapshotter,
            snapshot_key=self.snapshot_key,
        )
        msg.runtime.name = self.runtime
        if self.runtime_options is not None:
            msg.runtime.options.CopyFrom(self.runtime_options.to_any())
        msg.spec.CopyFrom(any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(self.spec).encode()))
        for name, value in self.extensions.items():
            msg.extensions[name].CopyFrom(_extension(name, value))
        return msg


def _extension(name: str, value: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=f"criproxy.io/{name}", value=value)


def _record(msg: containers_pb2.Container) -> ContainerRecord:
    spec: dict[str, Any] = {}
    if msg.HasField("spec") and msg.spec.value:
        try:
            spec = json.loads(msg.spec.value)
        except ValueError:
            spec = {}
    options = None
    if msg.runtime.HasField("options"):
        options = RuncOptions.from_any(msg.runtime.options)
    return ContainerRecord(
        id=msg.id,
        labels=dict(msg.labels),
        image=msg.image,
        runtime=msg.runtime.name,
        runtime_options=options,
        spec=spec,
        snapshotter=msg.snapshotter,
        snapshot_key=msg.snapshot_key,
        extensions={name: any_msg.value for name, any_msg in msg.extensions.items()},
        created_at_ns=msg.created_at.ToNanoseconds(),
    )


class ContainersService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = containers_pb2_grpc.ContainersStub(channel.grpc)

    async def create(self, record: ContainerRecord) -> ContainerRecord:
        resp = await self._channel.unary(
            self._stub.Create,
            containers_pb2.CreateContainerRequest(container=record.to_proto()),
            operation=f"create container {record.id}",
        )
        return _record(resp.container)

    async def get(self, container_id: str) -> ContainerRecord | None:
        try:
            resp = await self._channel.unary(
                self._stub.Get,
                containers_pb2.GetContainerRequest(id=container_id),
                operation=f"get container {container_id}",
            )
        except NotFound:
            return None
        return _record(resp.container)

    async def list(self, *filters: str) -> builtins.list[ContainerRecord]:
        resp = await self._channel.unary(
            self._stub.List,
            containers_pb2.ListContainersRequest(filters=filters),
            operation="list containers",
            timeout=None,
        )
        return [_record(c) for c in resp.containers]

    async def set_extensions(self, container_id: str, extensions: Mapping[str, bytes]) -> None:
        """Replace the named extensions (criproxy's metadata) and nothing else."""
        msg = containers_pb2.Container(id=container_id)
        for name, value in extensions.items():
            msg.extensions[name].CopyFrom(_extension(name, value))
        await self._channel.unary(
            self._stub.Update,
            containers_pb2.UpdateContainerRequest(
                container=msg,
                update_mask=field_mask_pb2.FieldMask(
                    paths=[f"extensions.{name}" for name in extensions]
                ),
            ),
            operation=f"update container {container_id}",
        )

    async def set_spec(self, container_id: str, spec: dict[str, Any]) -> None:
        """Replace the record's OCI spec (what a task created later starts from)."""
        msg = containers_pb2.Container(id=container_id)
        msg.spec.CopyFrom(any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode()))
        await self._channel.unary(
            self._stub.Update,
            containers_pb2.UpdateContainerRequest(
                container=msg, update_mask=field_mask_pb2.FieldMask(paths=["spec"])
            ),
            operation=f"update the spec of container {container_id}",
        )

    async def delete(self, container_id: str) -> bool:
        """Delete the record; False when there was none."""
        try:
            await self._channel.unary(
                self._stub.Delete,
                containers_pb2.DeleteContainerRequest(id=container_id),
                operation=f"delete container {container_id}",
            )
        except NotFound:
            return False
        return True
