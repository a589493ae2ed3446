"""The streaming server over TLS (`enable_tls_streaming`): a self-signed pair made at start,
or the configured one. The sessions behind it are a stand-in that echoes the command."""

from __future__ import annotations

import contextlib
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from criproxy.containers.streams import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    SessionStreams,
)
from criproxy.errors import Unavailable
from criproxy.streaming.server import StreamServer
from criproxy.streaming.tls import server_context, write_self_signed
from tests.support.streaming_client import remotecommand, upgrade

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Echo:
    async def exec(self, request: ExecRequest, streams: SessionStreams) -> int:
        assert streams.stdout is not None
        await streams.stdout.send(" ".join(request.cmd).encode())
        return 0

    async def attach(self, request: AttachRequest, streams: SessionStreams) -> int:
        return 0

    async def dial(self, request: PortForwardRequest, port: int) -> anyio.abc.ByteStream:
        raise Unavailable("no pods here")


@contextlib.asynccontextmanager
async def _serving(context: ssl.SSLContext) -> AsyncIterator[StreamServer]:
    server = StreamServer("127.0.0.1", 0, _Echo(), idle_timeout=60, ssl_context=context)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()


def _url(server: StreamServer, *cmd: str) -> str:
    return server.url("exec", ExecRequest(container_id="c", cmd=cmd, stdout=True))


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def _exec(url: str, trust: ssl.SSLContext) -> bytes:
    result = await remotecommand(url, stderr=False, ssl_context=trust, timeout=10)
    assert result.status.get("status") == "Success", result.error
    return result.stdout


async def test_without_a_pair_a_self_signed_one_is_made_and_served(tmp_path: Path) -> None:
    async with _serving(server_context("", "", tmp_path / "tls")) as server:
        url = _url(server, "echo", "over", "tls")
        assert url.startswith("https://127.0.0.1:")
        cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        # the certificate names 127.0.0.1: a client that checks the host name accepts it
        assert await _exec(url, _trusting(cert)) == b"echo over tls"


async def test_the_configured_pair_is_the_one_served(tmp_path: Path) -> None:
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    write_self_signed(cert, key)
    async with _serving(server_context(str(cert), str(key), tmp_path / "unused")) as server:
        assert await _exec(_url(server, "true"), _trusting(cert)) == b"true"
    assert not (tmp_path / "unused").exists()
    other = tmp_path / "other.crt"
    write_self_signed(other, tmp_path / "other.key")
    async with _serving(server_context(str(cert), str(key), tmp_path / "unused")) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exec(_url(server, "true"), _trusting(other))


async def test_a_plain_http_client_is_refused_and_the_next_tls_client_served(
    tmp_path: Path,
) -> None:
    async with _serving(server_context("", "", tmp_path)) as server:
        plain = _url(server, "true").replace("https://", "http://")
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await upgrade(plain, ("v4.channel.k8s.io",))
        assert await _exec(_url(server, "still", "up"), _trusting(tmp_path / "cert.pem")) == (
            b"still up"
        )
