"""What criproxy knows of a CRI container, persisted as JSON in its containerd record.

The JSON is an extension of the container's record, written on every state change, so a
restarted criproxy rebuilds every container (state, times, exit code, reason, log path)
from containerd alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from criproxy import records
from criproxy.oci.container import ContainerConfig  # noqa: TC001 (records resolves hints)

ContainerState = Literal["created", "running", "exited", "unknown"]

EXTENSION = "container"
"""The name of criproxy's extension on a container's record."""
KIND = "container"

REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM_KILLED = "OOMKilled"


@dataclass(frozen=True)
class ImageInfo:
    """The image a container was created from, as ImageStatus names it."""

    id: str
    """The config digest (`sha256:...`): the same id ImageStatus and ListImages give."""
    ref: str
    """The repo digest when known, else the id (containerd's `image_ref`)."""
    name: str
    """The name the container was created with, resolved (`docker.io/library/x:tag`)."""


@dataclass(frozen=True)
class EffectiveUser:
    uid: int
    gid: int
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Container:
    """One CRI container; replaced (never mutated) on every change, then persisted."""

    id: str
    sandbox_id: str
    config: ContainerConfig
    image: ImageInfo
    created_at_ns: int
    log_path: str = ""
    """The absolute log file (the pod's log directory joined with the config's log_path)."""
    state: ContainerState = "created"
    pid: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    oom_killed: bool = False
    stop_signal: str = "SIGTERM"
    user: EffectiveUser | None = None
    io_dir: str = ""
    """Where the container's FIFOs live."""
    restore_dir: str = ""
    """The unpacked checkpoint StartContainer restores from ("" once started, or for a
    container made from an image)."""

    def with_changes(self, **changes: Any) -> Container:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        return records.to_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> Container:
        return records.from_json(cls, raw)
