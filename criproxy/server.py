"""The CRI server process: socket, services, managed containerd, signals, shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import TYPE_CHECKING

import anyio
import grpc.aio
import structlog

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containerd import Containerd
from criproxy.containerd.managed import ManagedContainerd, ManagedPaths
from criproxy.cri import ImageServicer, RuntimeServicer, service_handler
from criproxy.images.fsinfo import ImageFilesystem
from criproxy.metrics import MetricsEndpoint
from criproxy.node import Node

if TYPE_CHECKING:
    from pathlib import Path

    from criproxy.config import Config

log = structlog.get_logger("criproxy.server")

SOCKET_MODE = 0o660


class SocketInUse(Exception):
    """Another live process answers on the socket path."""


def prepare_socket(path: Path) -> None:
    """Create the parent dir; replace a stale socket file, but never a live one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover of a process that died
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process is already serving on {path}")


def _bind(server: grpc.aio.Server, path: Path) -> None:
    old = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
    try:
        server.add_insecure_port(f"unix://{path}")
    finally:
        os.umask(old)


async def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    for directory in (config.root, config.state):
        directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    prepare_socket(config.listen)

    managed: ManagedContainerd | None = None
    address = config.containerd.address
    if config.managed:
        paths = ManagedPaths.under(config.root, config.state)
        address = str(paths.socket)
    containerd = Containerd(address, config.containerd.namespace)
    metrics_endpoint = MetricsEndpoint(config.metrics.address) if config.metrics.address else None

    async with anyio.create_task_group() as tg:
        try:
            if config.managed:
                managed = ManagedContainerd(paths, config.containerd.binary, containerd.ping)
                await managed.start_or_adopt()
                tg.start_soon(managed.supervise)

            services = api_pb2.DESCRIPTOR.services_by_name
            node = Node(config, containerd)
            image_fs = ImageFilesystem(containerd, config.containerd.snapshotter)
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(
                [
                    service_handler(services["RuntimeService"], RuntimeServicer(node)),
                    service_handler(services["ImageService"], ImageServicer(image_fs)),
                ]
            )
            _bind(server, config.listen)
            await server.start()
            os.chmod(config.listen, SOCKET_MODE)
            if metrics_endpoint is not None:
                metrics_endpoint.start()
            log.info(
                "serving",
                listen=str(config.listen),
                containerd=address,
                managed=config.managed,
                metrics=config.metrics.address or None,
            )

            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break

            await server.stop(config.shutdown_grace_period)
            with contextlib.suppress(FileNotFoundError):
                config.listen.unlink()
        finally:
            tg.cancel_scope.cancel()
            if metrics_endpoint is not None:
                metrics_endpoint.stop()
            with anyio.CancelScope(shield=True):
                await containerd.close()
                if managed is not None:
                    await managed.stop()
    log.info("stopped")
