"""A blob body of known length is read straight from the connection's socket once the
HTTP parser has handed over what it buffered; anything else goes through httpx."""

from __future__ import annotations

import contextlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import httpx
import pytest

from criproxy.images.registry import _CHUNK, _body, _direct
from tests.support.registry import Pki

if TYPE_CHECKING:
    from collections.abc import Iterator

BIG = os.urandom(3 * 1024 * 1024 + 12345)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BIG), 1 << 20):
                piece = BIG[start : start + (1 << 20)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = BIG[:1000] if self.path == "/small" else BIG
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/cut":
            self.wfile.write(body[: 1024 * 1024])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Pki]]:
    """A plain and a TLS server on loopback, and the CA the TLS one's certificate is from."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    tls = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = pki.server_context(pki.issue("body test"))
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{plain.server_port}", f"https://localhost:{tls.server_port}", pki
    for server in (plain, tls):
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _get(url: str, pki: Pki) -> Iterator[httpx.Response]:
    with (
        httpx.Client(verify=pki.client_context()) as client,
        client.stream("GET", url) as response,
    ):
        yield response


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_long_body_of_known_length_is_read_from_the_socket_whole(
    servers: tuple[str, str, Pki], tls: bool
) -> None:
    plain, secure, pki = servers
    with _get(f"{secure if tls else plain}/big", pki) as response:
        sock, length = _direct(response)
        assert sock is not None and length == len(BIG)
        chunks = list(_body(response))
    assert b"".join(chunks) == BIG
    assert max(len(c) for c in chunks) <= _CHUNK


def test_a_body_cut_short_is_an_httpx_error_the_pull_resumes_from(
    servers: tuple[str, str, Pki],
) -> None:
    _, secure, pki = servers
    with _get(f"{secure}/cut", pki) as response:
        assert _direct(response)[0] is not None
        received = 0
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in _body(response):
                received += len(chunk)
    assert received == 1024 * 1024


@pytest.mark.parametrize("path", ["/chunked", "/small"])
def test_chunked_or_short_bodies_go_through_httpx(servers: tuple[str, str, Pki], path: str) -> None:
    _, secure, pki = servers
    with _get(f"{secure}{path}", pki) as response:
        assert _direct(response)[0] is None
        body = b"".join(_body(response))
    assert body == (BIG[:1000] if path == "/small" else BIG)


def test_the_connection_is_not_reused_after_a_direct_read(
    servers: tuple[str, str, Pki],
) -> None:
    """The parser never saw the end of the body: the connection must not go back to the pool."""
    plain, _, pki = servers
    with httpx.Client(verify=pki.client_context()) as client:
        with client.stream("GET", f"{plain}/big") as first:
            assert b"".join(_body(first)) == BIG
            used = first.extensions["network_stream"].get_extra_info("socket")
        with client.stream("GET", f"{plain}/small") as second:
            again = second.extensions["network_stream"].get_extra_info("socket")
            assert second.read() == BIG[:1000]
        assert again is not used
