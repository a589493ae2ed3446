"""The streaming server: HTTP/1.1 (h11) on its own port, one route per session kind
(`/exec/TOKEN`, `/attach/TOKEN`, `/portforward/TOKEN`), the upgrade to SPDY/3.1 (or
WebSocket), and the idle timeout.

A token is taken (single use) before anything else; an unknown, used or expired one is
404. Each connection runs in the server's task group and ends with its session, with the
client, with the idle timeout, or with the server.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc
import h11
import structlog
from anyio.streams.tls import TLSStream

from criproxy import metrics
from criproxy.containers.streams import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    SessionStreams,
)
from criproxy.network import sockets
from criproxy.streaming import portforward, remotecommand, websocket
from criproxy.streaming.remotecommand import StreamOptions
from criproxy.streaming.spdy import SpdyConnection
from criproxy.streaming.tokens import TokenStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import ByteStream, TaskStatus

log = structlog.get_logger("criproxy.streaming")

KINDS = ("exec", "attach", "portforward")
REQUEST_TIMEOUT = 30.0
"""How long a client has to send its request line and headers."""
_MAX_REQUEST = 64 * 1024
_IDLE_CHECK = 30.0


@dataclass(frozen=True)
class Upgrade:
    """An accepted request, about to switch protocols."""

    kind: str
    request: object
    """What the token was issued for."""
    headers: Sequence[tuple[bytes, bytes]]
    """The HTTP request's headers, names lower-cased."""
    method: bytes
    target: bytes

    def header_values(self, name: bytes) -> list[str]:
        """Every value of a header, comma lists split."""
        values: list[str] = []
        for key, value in self.headers:
            if key == name:
                values += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
        return values


class Sessions(Protocol):
    """The sessions themselves (containers and pods), as the server runs them."""

    async def exec(self, request: ExecRequest, streams: SessionStreams) -> int: ...

    async def attach(self, request: AttachRequest, streams: SessionStreams) -> int: ...

    async def dial(self, request: PortForwardRequest, port: int) -> anyio.abc.ByteStream: ...


class StreamServer:
    def __init__(
        self,
        address: str,
        port: int,
        sessions: Sessions,
        *,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        self._address = address
        self._port = port
        self._sessions = sessions
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self.tokens = tokens or TokenStore()
        self._bound: tuple[str, int] | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen (started once bound: a port in use fails the start) and serve until
        cancelled (server shutdown)."""
        listener = await anyio.to_thread.run_sync(sockets.listen_tcp, self._address, self._port)
        try:
            sockname = listener.getsockname()
            self._bound = (str(sockname[0]), int(sockname[1]))
            task_status.started()
            log.info("streaming server listening", url=self.base_url)
            async with anyio.create_task_group() as tg:
                while True:
                    tg.start_soon(self._serve_one, await sockets.accept(listener))
        finally:
            anyio.notify_closing(listener)
            listener.close()

    @property
    def address(self) -> str:
        return f"{self._address}:{self._port}"

    @property
    def base_url(self) -> str:
        assert self._bound is not None, "the streaming server does not listen yet"
        host, port = self._bound
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{_url_host(host)}:{port}"

    def url(self, kind: str, request: object) -> str:
        """A single-use URL for one session."""
        return f"{self.base_url}/{kind}/{self.tokens.issue(kind, request)}"

    async def _serve_one(self, conn: sockets.SocketByteStream) -> None:
        stream: ByteStream = conn
        try:
            async with conn:
                if self._ssl is not None:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        stream = await TLSStream.wrap(
                            conn, server_side=True, ssl_context=self._ssl, standard_compatible=False
                        )
                await self._serve(stream)
        except (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError, OSError):
            pass  # the client went away
        except Exception as err:  # one connection must never take the server down
            log.warning("streaming connection failed", error=repr(err), exc_info=err)

    async def _serve(self, stream: ByteStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
        request = None
        with anyio.move_on_after(REQUEST_TIMEOUT):
            request = await _read_request(conn, stream)
        if request is None:
            return
        kind, token = _route(request.target)
        if kind is None:
            await respond(
                conn, stream, 404, "not found: the path is not /exec|attach|portforward/TOKEN"
            )
            return
        taken = self.tokens.take(kind, token)
        if taken is None:
            await respond(conn, stream, 404, "unknown, used or expired token")
            return
        upgrade = Upgrade(
            kind=kind,
            request=taken,
            headers=[(k.lower(), v) for k, v in request.headers],
            method=request.method,
            target=request.target,
        )
        if websocket.is_websocket_request(upgrade.headers):
            if upgrade.method != b"GET":
                await respond(conn, stream, 400, "a WebSocket upgrade must be a GET request")
                return
            await self._serve_websocket(upgrade, conn, stream)
        elif "spdy/3.1" in (v.lower() for v in upgrade.header_values(b"upgrade")):
            await self._serve_spdy(upgrade, conn, stream)
        else:
            await respond(
                conn, stream, 400, "this session needs an upgrade to SPDY/3.1 or WebSocket"
            )

    async def _serve_spdy(self, upgrade: Upgrade, conn: h11.Connection, stream: ByteStream) -> None:
        offered = upgrade.header_values(b"x-stream-protocol-version")
        supported = (
            (portforward.PROTOCOL,) if upgrade.kind == "portforward" else remotecommand.PROTOCOLS
        )
        protocol = next((p for p in offered if p in supported), "") if offered else supported[-1]
        if not protocol:
            await respond(
                conn,
                stream,
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}",
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
            )
            return
        initial = await switch_protocols(
            conn,
            stream,
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocol),
            ],
        )
        spdy = SpdyConnection(stream, server=True, initial=initial)
        await self._run(
            upgrade.kind,
            readers=[spdy.run],
            session=lambda: self._spdy_session(upgrade.request, spdy, protocol),
            last_activity=lambda: spdy.last_activity,
            close=spdy.aclose,
        )

    async def _serve_websocket(
        self, upgrade: Upgrade, conn: h11.Connection, stream: ByteStream
    ) -> None:
        protocols = (
            websocket.PORTFORWARD_PROTOCOLS
            if upgrade.kind == "portforward"
            else websocket.EXEC_PROTOCOLS
        )
        trailing, _ = conn.trailing_data
        try:
            ws = await websocket.accept(
                stream,
                upgrade.headers,
                protocols=protocols,
                target=upgrade.target,
                initial=bytes(trailing),
            )
        except websocket.HandshakeRefused:
            return  # websocket.accept logged it and answered the client
        request = upgrade.request
        if ws.protocol == websocket.SPDY_TUNNEL:  # crictl's port-forward over WebSocket
            spdy = SpdyConnection(websocket.WebSocketByteStream(ws), server=True)
            await self._run(
                upgrade.kind,
                readers=[ws.run, spdy.run],
                session=lambda: self._spdy_session(request, spdy, portforward.PROTOCOL),
                last_activity=lambda: spdy.last_activity,
                close=spdy.aclose,
            )
            return
        channels = websocket.ChannelConnection(ws)
        await self._run(
            upgrade.kind,
            readers=[channels.run],
            session=lambda: self._channel_session(request, channels, upgrade),
            last_activity=lambda: channels.last_activity,
            close=channels.close,
        )

    async def _run(
        self,
        kind: str,
        *,
        readers: Sequence[Callable[[], Awaitable[None]]],
        session: Callable[[], Awaitable[None]],
        last_activity: Callable[[], float],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        """A session beside its connection's readers: it ends when the client goes (a
        reader returns), when nothing moved for the idle timeout, or on its own."""
        metrics.STREAM_SESSIONS_STARTED.labels(kind).inc()
        with metrics.STREAM_SESSIONS.labels(kind).track_inprogress():
            async with anyio.create_task_group() as tg:

                async def read(reader: Callable[[], Awaitable[None]]) -> None:
                    await reader()
                    tg.cancel_scope.cancel()  # the client went away: so does its session

                async def idle() -> None:
                    await watch_idle(last_activity, self._idle_timeout)
                    log.info("streaming connection idle too long; closing", kind=kind)
                    tg.cancel_scope.cancel()

                for reader in readers:
                    tg.start_soon(read, reader)
                tg.start_soon(idle)
                try:
                    await session()
                finally:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        with anyio.move_on_after(websocket.CLOSE_TIMEOUT):
                            await close()
                    tg.cancel_scope.cancel()

    async def _spdy_session(self, request: object, spdy: SpdyConnection, protocol: str) -> None:
        if isinstance(request, PortForwardRequest):
            await portforward.serve(
                spdy, functools.partial(self._sessions.dial, request), request.sandbox_id
            )
            return
        session, options, cmd = self._remote_command(request)
        await remotecommand.serve(spdy, protocol, options, session, cmd)

    async def _channel_session(
        self, request: object, channels: websocket.ChannelConnection, upgrade: Upgrade
    ) -> None:
        if isinstance(request, PortForwardRequest):
            ports = _query_ports(upgrade.target) or request.ports
            dial = functools.partial(self._sessions.dial, request)
            await portforward.serve_channels(channels, ports, dial)
            return
        session, options, cmd = self._remote_command(request)
        await remotecommand.serve_channels(channels, options, session, cmd)

    def _remote_command(
        self, request: object
    ) -> tuple[remotecommand.Session, StreamOptions, tuple[str, ...]]:
        if isinstance(request, ExecRequest):
            exec_request = request

            async def run_exec(streams: SessionStreams) -> int:
                return await self._sessions.exec(exec_request, streams)

            options = StreamOptions(request.stdin, request.stdout, request.stderr, request.tty)
            return run_exec, options, request.cmd
        assert isinstance(request, AttachRequest)
        attach_request = request

        async def run_attach(streams: SessionStreams) -> int:
            return await self._sessions.attach(attach_request, streams)

        options = StreamOptions(request.stdin, request.stdout, request.stderr, request.tty)
        return run_attach, options, ()


def _query_ports(target: bytes) -> tuple[int, ...]:
    """The `port` query parameters of a WebSocket port-forward (commas allowed)."""
    query = target.decode("latin-1").partition("?")[2]
    ports: list[int] = []
    for key, value in urllib.parse.parse_qsl(query):
        if key == "port":
            for part in value.split(","):
                if part.strip().isdigit() and 0 < int(part) < 65536:
                    ports.append(int(part))
    return tuple(ports)


async def watch_idle(last_activity: Callable[[], float], idle_timeout: float) -> None:
    """Returns once nothing has moved for `idle_timeout` seconds (the caller then ends the
    connection); a client's pings do not count as activity."""
    while True:
        idle = time.monotonic() - last_activity()
        if idle >= idle_timeout:
            return
        await anyio.sleep(min(idle_timeout - idle, _IDLE_CHECK))


async def _read_request(conn: h11.Connection, stream: ByteStream) -> h11.Request | None:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            await respond(conn, stream, err.error_status_hint, f"bad request: {err}")
            return None
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive())
            continue
        return None


def _route(target: bytes) -> tuple[str | None, str]:
    path = target.decode("latin-1").split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] in KINDS:
        return parts[0], parts[1]
    return None, ""


async def respond(
    conn: h11.Connection,
    stream: ByteStream,
    status: int,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """A plain-text answer, and the end of the connection."""
    body = (message + "\n").encode()
    out = conn.send(
        h11.Response(
            status_code=status,
            headers=[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                *headers,
            ],
        )
    )
    out = (
        (out or b"")
        + (conn.send(h11.Data(data=body)) or b"")
        + (conn.send(h11.EndOfMessage()) or b"")
    )
    await stream.send(out)


async def switch_protocols(
    conn: h11.Connection, stream: ByteStream, headers: Sequence[tuple[str, str]]
) -> bytes:
    """Send `101 Switching Protocols`; the bytes the client sent past its request."""
    await stream.send(
        conn.send(h11.InformationalResponse(status_code=101, headers=list(headers))) or b""
    )
    trailing, _ = conn.trailing_data
    return bytes(trailing)


def _url_host(host: str) -> str:
    """The host part of a URL for the address the server is bound to: an unspecified
    address (all interfaces) is reached at loopback, where the kubelet runs."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)
