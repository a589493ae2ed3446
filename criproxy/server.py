"""The CRI server process: socket, services, managed containerd, signals, shutdown."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import socket
import ssl
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import grpc.aio
import structlog

from criproxy import __version__, logs, metrics, tracing
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.config import ConfigError
from criproxy.containerd import Containerd
from criproxy.containerd.managed import ManagedContainerd, ManagedPaths
from criproxy.containers.service import ContainerService
from criproxy.cri import ImageServicer, RuntimeServicer, service_handler
from criproxy.errors import CriproxyError
from criproxy.events import EventLoop
from criproxy.images.service import ImageService
from criproxy.metrics import MetricsEndpoint
from criproxy.node import Node
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import Nri
from criproxy.recovery import Recovery
from criproxy.sandbox.service import SandboxService
from criproxy.stats import UsageService
from criproxy.store import ContainerStore, RecoveredGate, SandboxStore
from criproxy.streaming.server import StreamServer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anyio.abc import TaskGroup

    from criproxy.config import Config
    from criproxy.containers.streams import (
        AttachRequest,
        ExecRequest,
        PortForwardRequest,
        SessionStreams,
    )

log = structlog.get_logger("criproxy.server")

SOCKET_MODE = 0o660
RECOVERY_WAIT = 10.0


class StartError(Exception):
    """criproxy cannot start serving; the message says why and what to look at."""


class SocketInUse(StartError):
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


def _start_metrics(
    config: Config, containerd: Containerd, tg: TaskGroup, stack: contextlib.AsyncExitStack
) -> str | None:
    """The metrics endpoint and its containerd health check; its bound address."""
    if not config.metrics.address:
        return None
    health = _Health()
    tg.start_soon(health.watch, containerd)
    endpoint = MetricsEndpoint(config.metrics.address, health.report)
    try:
        endpoint.start()
    except OSError as err:  # CRI goes on: the kubelet needs it more
        log.error(
            "cannot serve metrics",
            address=config.metrics.address,
            error=err.strerror or str(err),
        )
        return None
    stack.callback(endpoint.stop)
    return endpoint.address


def _reload(config: Config, reread: Callable[[], Config] | None, domain: _Domain) -> None:
    """SIGHUP: registry hosts and credentials, runtime handlers and the log level from the
    file again. Calls in flight go on with what they started with (a pull keeps its
    registry client and credentials); the next calls see the new values. A file that does
    not load changes nothing. Everything else needs a restart, and the log says which."""
    if reread is None:
        return
    try:
        new = reread()
    except ConfigError as err:
        log.error("configuration not reloaded", error=str(err))
        return
    changed = config.reload_from(new)
    domain.images.reload(config)
    domain.node.forget_handler_features()  # a handler's binary may have changed
    logs.configure(config.log_level)
    log.info(
        "configuration reloaded",
        changed=changed,
        needs_restart=config.differences_from(new) or None,
    )


LOOP_LAG_INTERVAL = 1.0
HEALTH_INTERVAL = 5.0


async def _measure_loop_lag() -> None:
    """How late the event loop wakes a timer: time it spent on other work meanwhile."""
    while True:
        before = time.monotonic()
        await anyio.sleep(LOOP_LAG_INTERVAL)
        metrics.LOOP_LAG.observe(max(0.0, time.monotonic() - before - LOOP_LAG_INTERVAL))


class _Health:
    """containerd's answer to a Version call every few seconds, for /healthz and
    `criproxy_containerd_up` (read from the endpoint's thread)."""

    def __init__(self) -> None:
        self.ok = False
        self.why = "containerd not checked yet"

    async def watch(self, containerd: Containerd) -> None:
        while True:
            try:
                await containerd.version(timeout=2.0)
            except CriproxyError as err:
                self.ok, self.why = False, f"containerd does not answer: {err.message}"
            else:
                self.ok, self.why = True, "ok"
            metrics.CONTAINERD_UP.set(1 if self.ok else 0)
            await anyio.sleep(HEALTH_INTERVAL)

    def report(self) -> tuple[bool, str]:
        return self.ok, self.why


@dataclasses.dataclass(frozen=True)
class _Domain:
    """The domain services, wired to one containerd."""

    node: Node
    images: ImageService
    sandboxes: SandboxService
    containers: ContainerService
    usage: UsageService
    recovery: Recovery
    streams: StreamServer

    @classmethod
    def build(cls, config: Config, containerd: Containerd) -> _Domain:
        gate = RecoveredGate()
        images = ImageService(config, containerd)
        sandboxes = SandboxService(config, containerd, images, SandboxStore(gate))
        containers = ContainerService(config, containerd, images, sandboxes, ContainerStore(gate))
        usage = UsageService(
            containerd,
            config.containerd.snapshotter,
            images,
            sandboxes,
            containers,
            systemd=config.cgroup_driver == "systemd",
        )
        recovery = Recovery(containerd, images, sandboxes.deps, containers.deps)
        sandboxes.deps.nri = Nri(
            config.nri,
            __version__,
            lambda: nri_hooks.snapshot(
                [p for p in sandboxes.store.pods_if_ready() if p.state != "creating"],
                [(c, containers.store.specs.get(c.id)) for c in containers.store.index],
            ),
        )
        sandboxes.deps.nri.recovered = gate.wait
        metrics.STATE.pods_by_state = lambda: collections.Counter(
            p.state for p in sandboxes.store.index.values()
        )
        metrics.STATE.containers_by_state = lambda: collections.Counter(
            c.state for c in containers.store.index.values()
        )
        metrics.STATE.pod_loop_jobs = sandboxes.deps.loops.queued
        metrics.STATE.nri_plugins = lambda: len(sandboxes.deps.nri.plugins)
        sandboxes.deps.nri.updater = containers.update_plugin_limits
        sandboxes.deps.nri.evictor = lambda container_id, reason: containers.stop(container_id, 0)
        streams = StreamServer(
            config.stream_server.address,
            config.stream_server.port,
            _Sessions(containers, sandboxes),
            idle_timeout=config.stream_idle_timeout,
            ssl_context=_streaming_tls(config),
        )
        return cls(
            Node(config, containerd), images, sandboxes, containers, usage, recovery, streams
        )

    def events(self, containerd: Containerd) -> EventLoop:
        return EventLoop(
            containerd,
            recover=[self.recovery.recover],
            handlers=[self.images.on_event, self.sandboxes.on_event, self.containers.on_event],
        )

    async def start_background(self, tg: TaskGroup) -> None:
        tg.start_soon(_measure_loop_lag)
        tg.start_soon(self.sandboxes.run)
        tg.start_soon(self.containers.run)
        tg.start_soon(self.usage.run)
        tg.start_soon(self.recovery.run)
        try:
            await self.sandboxes.deps.nri.serve(tg)
        except OSError as err:
            raise StartError(
                f"cannot serve NRI on {self.sandboxes.deps.nri.config.socket_path}: {err}"
            ) from None
        try:
            await tg.start(self.streams.run)
        except OSError as err:
            raise StartError(f"cannot serve streaming on {self.streams.address}: {err}") from None


@dataclasses.dataclass(frozen=True)
class _Sessions:
    """The streaming server's sessions, run by the domain."""

    containers: ContainerService
    sandboxes: SandboxService

    async def exec(self, request: ExecRequest, streams: SessionStreams) -> int:
        return await self.containers.exec_session(request, streams)

    async def attach(self, request: AttachRequest, streams: SessionStreams) -> int:
        return await self.containers.attach_session(request, streams)

    async def dial(self, request: PortForwardRequest, port: int) -> anyio.abc.ByteStream:
        return await self.sandboxes.dial(request.sandbox_id, port)


def _streaming_tls(config: Config) -> ssl.SSLContext | None:
    if not config.enable_tls_streaming:
        return None
    # imported only here: the X.509 library is some 15 MiB of a criproxy that serves no TLS
    from criproxy.streaming.tls import server_context

    pair = config.x509_key_pair_streaming
    try:
        return server_context(pair.tls_cert_file, pair.tls_key_file, config.state / "streaming")
    except (OSError, ssl.SSLError) as err:
        raise StartError(f"cannot load the streaming server's TLS key pair: {err}") from None


def _build_server(domain: _Domain) -> grpc.aio.Server:
    services = api_pb2.DESCRIPTOR.services_by_name
    runtime = RuntimeServicer(
        domain.node, domain.sandboxes, domain.containers, domain.usage, domain.streams
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    server.add_generic_rpc_handlers(
        [
            service_handler(services["RuntimeService"], runtime),
            service_handler(services["ImageService"], ImageServicer(domain.images)),
        ]
    )
    return server


async def _start_managed(
    config: Config, containerd: Containerd, stack: contextlib.AsyncExitStack
) -> ManagedContainerd:
    paths = ManagedPaths.under(config.root, config.state)
    managed = ManagedContainerd(paths, config.containerd.binary, containerd.ping)
    stack.push_async_callback(managed.stop)  # also when the start fails half-way
    try:
        await managed.start_or_adopt()
    except (CriproxyError, OSError) as err:
        raise StartError(f"cannot start the managed containerd: {err}") from None
    return managed


async def serve(config: Config, reread: Callable[[], Config] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; on SIGHUP, `reread` the
    configuration and apply what can change while serving (see `_reload`).

    Calls in flight get `shutdown_grace_period` to finish. The managed containerd is stopped
    last; its shims, and so the pods, keep running.
    """
    for directory in (config.root, config.state):
        directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    prepare_socket(config.listen)
    tracing.configure(config.tracing)
    try:
        await _serve(config, reread)
    finally:
        tracing.shutdown()  # what is buffered goes out


async def _serve(config: Config, reread: Callable[[], Config] | None) -> None:

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with contextlib.AsyncExitStack() as stack:
            address = config.containerd.address
            if config.managed:
                address = str(ManagedPaths.under(config.root, config.state).socket)
            containerd = Containerd(address, config.containerd.namespace)
            stack.push_async_callback(containerd.close)
            managed = await _start_managed(config, containerd, stack) if config.managed else None

            domain = _Domain.build(config, containerd)
            stack.push_async_callback(domain.images.close)
            events = domain.events(containerd)

            async with anyio.create_task_group() as tg:
                if managed is not None:
                    tg.start_soon(managed.supervise)
                await domain.start_background(tg)
                tg.start_soon(events.run)
                # Answer List/Status from a filled index right away, unless containerd is
                # down: then serve anyway (Status says so) and fill it when it is back.
                with anyio.move_on_after(RECOVERY_WAIT):
                    await events.ready.wait()
                if not events.ready.is_set():
                    log.warning("serving before the first recovery; containerd is not answering")
                server = _build_server(domain)
                try:
                    _bind(server, config.listen)
                except RuntimeError as err:
                    raise StartError(f"cannot listen on {config.listen}: {err}") from None
                await server.start()
                stack.callback(_remove, config.listen)
                os.chmod(config.listen, SOCKET_MODE)
                metrics_address = _start_metrics(config, containerd, tg, stack)
                log.info(
                    "serving",
                    listen=str(config.listen),
                    containerd=address,
                    managed=managed is not None,
                    metrics=metrics_address,
                )
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        _reload(config, reread, domain)
                        continue
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break
                await server.stop(config.shutdown_grace_period)
                tg.cancel_scope.cancel()
    log.info("stopped")


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
