"""containerd's shared message types as the project's dataclasses, with converters.

Only the `containerd/` package converts; everything above it sees these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from criproxy._generated.containerd.types import descriptor_pb2, mount_pb2


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> descriptor_pb2.Descriptor:
        return descriptor_pb2.Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=self.annotations,
        )

    @classmethod
    def from_proto(cls, msg: descriptor_pb2.Descriptor) -> Descriptor:
        return cls(msg.media_type, msg.digest, msg.size, dict(msg.annotations))


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    def to_proto(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(
            type=self.type, source=self.source, target=self.target, options=self.options
        )

    @classmethod
    def from_proto(cls, msg: mount_pb2.Mount) -> Mount:
        return cls(msg.type, msg.source, msg.target, tuple(msg.options))
