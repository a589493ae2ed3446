"""Clients of criproxy's streaming server written against the protocols (HTTP/1.1
upgrade, SPDY/3.1 streams, Kubernetes' remote command): what kubectl and crictl do."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11

from criproxy.streaming.spdy import SpdyConnection, SpdyStream


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    protocol: str = ""

    @property
    def status(self) -> dict[str, Any]:
        return json.loads(self.error) if self.error else {}


@dataclass
class Upgraded:
    stream: anyio.abc.ByteStream
    protocol: str
    initial: bytes
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def upgrade(
    url: str,
    protocols: tuple[str, ...],
    upgrade_to: str = "SPDY/3.1",
    ssl_context: ssl.SSLContext | None = None,
) -> Upgraded:
    """Connect (TLS for https, trusting `ssl_context`) and ask to switch protocols; the
    connection after a 101 (or the refusal)."""
    parts = urllib.parse.urlsplit(url)
    stream: anyio.abc.ByteStream = await anyio.connect_tcp(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        tls=parts.scheme == "https",
        ssl_context=ssl_context,
        tls_standard_compatible=False,
    )
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", parts.netloc),
        ("Connection", "Upgrade"),
        ("Upgrade", upgrade_to),
        ("Content-Length", "0"),
        *[("X-Stream-Protocol-Version", p) for p in protocols],
    ]
    await stream.send(conn.send(h11.Request(method="POST", target=parts.path, headers=headers)))
    await stream.send(conn.send(h11.EndOfMessage()))
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive()
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            got = {k.decode().lower(): v.decode() for k, v in event.headers}
            trailing, _ = conn.trailing_data
            return Upgraded(
                stream, got.get("x-stream-protocol-version", ""), bytes(trailing), 101, got
            )
        if isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode().lower(): v.decode() for k, v in event.headers}
            while not isinstance(event, h11.EndOfMessage):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Data):
                    body += event.data
            await stream.aclose()
            return Upgraded(stream, "", b"", status, got, body)


async def _read_all(stream: SpdyStream, into: bytearray) -> None:
    try:
        while True:
            into += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass


async def remotecommand(
    url: str,
    *,
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    resize: tuple[int, int] | None = None,
    protocols: tuple[str, ...] = ("v4.channel.k8s.io",),
    timeout: float = 60,
    ssl_context: ssl.SSLContext | None = None,
) -> Result:
    """One exec or attach, as kubectl runs it: the streams, stdin sent and closed."""
    up = await upgrade(url, protocols, ssl_context=ssl_context)
    assert up.status == 101, (up.status, up.body)
    spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
    out, err, error = bytearray(), bytearray(), bytearray()
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(spdy.run)
            error_stream = await spdy.open({"streamtype": "error"})
            streams: dict[str, SpdyStream] = {}
            wanted = [("stdin", stdin is not None), ("stdout", stdout)]
            wanted += [("stderr", stderr and not tty), ("resize", tty and resize is not None)]
            for name, on in wanted:
                if on:
                    streams[name] = await spdy.open({"streamtype": name})
            async with anyio.create_task_group() as readers:
                readers.start_soon(_read_all, error_stream, error)
                if "stdout" in streams:
                    readers.start_soon(_read_all, streams["stdout"], out)
                if "stderr" in streams:
                    readers.start_soon(_read_all, streams["stderr"], err)
                if "resize" in streams and resize is not None:
                    width, height = resize
                    await streams["resize"].send(
                        json.dumps({"Width": width, "Height": height}).encode()
                    )
                if "stdin" in streams and stdin is not None:
                    if stdin:
                        await streams["stdin"].send(stdin)
                    await streams["stdin"].send_eof()
            tg.cancel_scope.cancel()
    await spdy.aclose()
    return Result(bytes(out), bytes(err), bytes(error), up.protocol)


# --- WebSocket --------------------------------------------------------------------------------


class WebSocketClient:
    """A WebSocket client (wsproto) over TCP: binary or text messages both ways."""

    def __init__(self, stream: anyio.abc.ByteStream, ws: Any, protocol: str) -> None:
        self.stream = stream
        self._ws = ws
        self.protocol = protocol
        self._messages: list[bytes | str] = []
        self._partial: list[bytes | str] = []
        self.closed = False

    @classmethod
    async def connect(cls, url: str, protocols: tuple[str, ...]) -> WebSocketClient:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        parts = urllib.parse.urlsplit(url)
        stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 80)
        ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        await stream.send(
            ws.send(Request(host=parts.netloc, target=target, subprotocols=list(protocols)))
        )
        while True:
            ws.receive_data(await stream.receive())
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return cls(stream, ws, event.subprotocol or "")
                if isinstance(event, RejectConnection):
                    raise ConnectionRefusedError(event.status_code)

    async def send(self, data: bytes | str) -> None:
        from wsproto.events import BytesMessage, TextMessage

        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        await self.stream.send(self._ws.send(event))

    async def receive(self) -> bytes | str:
        """The next whole message; EOFError once the server closed."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        while not self._messages:
            if self.closed:
                raise EOFError
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self.closed = True
                continue
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, (BytesMessage, TextMessage)):
                    self._partial.append(event.data)
                    if event.message_finished:
                        first = self._partial[0]
                        joined = (
                            "".join(str(p) for p in self._partial)
                            if isinstance(first, str)
                            else b"".join(bytes(p) for p in self._partial)  # type: ignore[arg-type]
                        )
                        self._messages.append(joined)
                        self._partial = []
                elif isinstance(event, Ping):
                    await self.stream.send(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        await self.stream.send(self._ws.send(event.response()))
                    self.closed = True
        return self._messages.pop(0)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def ws_remotecommand(
    url: str,
    *,
    stdin: bytes | None = None,
    protocol: str = "v5.channel.k8s.io",
    timeout: float = 60,
) -> Result:
    """One exec or attach over the channel protocols (0 stdin, 1 stdout, 2 stderr, 3 error),
    stdin closed with v5's close signal."""
    out, err, error = bytearray(), bytearray(), bytearray()
    with anyio.fail_after(timeout):
        client = await WebSocketClient.connect(url, (protocol,))
        if stdin is not None:
            await client.send(b"\x00" + stdin)
            await client.send(b"\xff\x00")  # v5: close channel 0
        try:
            while True:
                message = await client.receive()
                if isinstance(message, str):  # base64 protocols: "<digit><base64>"
                    if not message:
                        continue
                    channel, payload = int(message[0]), base64.b64decode(message[1:])
                elif message:
                    channel, payload = message[0], message[1:]
                else:
                    continue
                {1: out, 2: err, 3: error}.get(channel, bytearray()).extend(payload)
        except EOFError:
            pass
        await client.aclose()
    return Result(bytes(out), bytes(err), bytes(error), client.protocol)


class TunnelStream(anyio.abc.ByteStream):
    """A client's SPDY bytes tunnelled in binary WebSocket messages."""

    def __init__(self, client: WebSocketClient) -> None:
        self._client = client
        self._buffer = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._buffer:
            try:
                message = await self._client.receive()
            except EOFError:
                raise anyio.EndOfStream from None
            self._buffer = message.encode() if isinstance(message, str) else message
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        await self._client.send(bytes(item))

    async def send_eof(self) -> None:
        await self._client.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
