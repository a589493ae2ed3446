"""Pods and containers over the in-memory containerd double, for unit tests of call order
and undo logic: host-network, host-IPC pods need neither root nor CNI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from criproxy.config import Config
from criproxy.containerd import Descriptor
from criproxy.containers.service import ContainerService
from criproxy.images.manifest import ImageConfig
from criproxy.images.store import Image, ImageContent
from criproxy.oci.container import ContainerConfig
from criproxy.sandbox.model import PodConfig, PodMetadata
from criproxy.sandbox.service import SandboxService
from criproxy.store import ContainerStore, RecoveredGate, SandboxStore
from tests.support.containerd_double import ContainerdDouble

PAUSE = "registry.test/pause:1"
BUSYBOX = "registry.test/busybox:1"


def _image(ref: str, entrypoint: list[str]) -> Image:
    raw = {"config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]}, "rootfs": {}}
    digest = "sha256:" + ref.encode().hex().ljust(64, "0")[:64]
    content = ImageContent(
        id=digest,
        target=Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 1),
        manifest_digest=digest,
        config=ImageConfig(user="", diff_ids=("sha256:" + "1" * 64,), raw=raw),
        size=1,
        chain_id="sha256:" + "1" * 64,
    )
    return Image(content, (ref,), pinned=False)


class Images:
    """The image service as far as pods and containers ask it."""

    sandbox_image = PAUSE

    def __init__(self) -> None:
        self.images = {PAUSE: _image(PAUSE, ["/pause"]), BUSYBOX: _image(BUSYBOX, ["/bin/sh"])}

    async def ensure_sandbox_image(self) -> Image:
        return self.images[PAUSE]

    def status(self, ref: str) -> Image | None:
        return self.images.get(ref)


@dataclass
class Node:
    containerd: ContainerdDouble
    sandboxes: SandboxService
    containers: ContainerService
    config: Config


@contextlib.asynccontextmanager
async def node(tmp: Path) -> AsyncIterator[Node]:
    config = Config(root=tmp / "root", state=tmp / "state")
    containerd = ContainerdDouble()
    images = Images()
    gate = RecoveredGate()
    gate.open()
    sandboxes = SandboxService(config, containerd, images, SandboxStore(gate))  # type: ignore[arg-type]
    containers = ContainerService(
        config,
        containerd,  # type: ignore[arg-type]
        images,  # type: ignore[arg-type]
        sandboxes,
        ContainerStore(gate),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(sandboxes.run)
        tg.start_soon(containers.run)
        yield Node(containerd, sandboxes, containers, config)
        tg.cancel_scope.cancel()


def host_pod(name: str) -> PodConfig:
    return PodConfig(PodMetadata(name, f"uid-{name}", "default"), network="node", ipc="node")


def container(name: str) -> ContainerConfig:
    return ContainerConfig(name=name, image=BUSYBOX)
