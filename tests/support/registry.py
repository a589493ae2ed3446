"""A real registry (Debian's `docker-registry`, distribution 2.8) for pull tests, on loopback.

Variants: plain HTTP, TLS from a per-session CA (optionally requiring client certificates),
htpasswd basic auth, and token auth backed by a small token server written here, which
records every token request so tests can assert what a client asked for and how often.
Certificates and JWT signatures come from the `openssl` CLI, htpasswd hashes from `bcrypt`,
and pushes go through the registry's HTTP API with `httpx`, as any client's would.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx

from tests.support.images import Descriptor, Image, Index

REGISTRY_BINARY = "docker-registry"
TOKEN_SERVICE = "criproxy-test-registry"
TOKEN_ISSUER = "criproxy-test-token-issuer"
DEFAULT_USERNAME = "criproxy"
DEFAULT_PASSWORD = "s3cret-pa55"
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

AuthKind = Literal["none", "basic", "token"]


class RegistryError(RuntimeError):
    """The registry (or the token server) did not start or did not do what was asked."""


def missing_requirements(*, tls: bool = False, auth: AuthKind = "none") -> str | None:
    """Why a registry of this kind cannot run here, or None: the skip reason to show."""
    if shutil.which(REGISTRY_BINARY) is None:
        return f"{REGISTRY_BINARY} not installed (apt-get install docker-registry)"
    if (tls or auth == "token") and shutil.which("openssl") is None:
        return "openssl not installed (apt-get install openssl)"
    if auth == "basic":
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            return "the bcrypt package is missing from the venv (htpasswd hashes)"
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([str(a) for a in args], input=stdin, capture_output=True)
    if proc.returncode != 0:
        cmd = " ".join(str(a) for a in args)
        raise RegistryError(f"{cmd} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


class Pki:
    """A throwaway CA (made with the openssl CLI) and the leaf certificates tests need.

    Nothing here touches the system trust store: clients get the CA file explicitly.
    """

    def __init__(self, directory: Path, name: str = "criproxy test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._serial = 0
        self._lock = threading.Lock()
        self.ca_path = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        cnf = self._cnf("ca", name, "basicConstraints = critical,CA:TRUE\n"
                        "keyUsage = critical,keyCertSign,cRLSign\n"
                        "subjectKeyIdentifier = hash\n")  # fmt: skip
        _run(
            "openssl", "req", "-x509", "-new", "-config", cnf, "-extensions", "ext",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", self.ca_key, "-out", self.ca_path, "-days", "3650",
        )  # fmt: skip

    def _cnf(self, stem: str, cn: str, ext: str) -> Path:
        path = self.dir / f"{stem}.cnf"
        path.write_text(
            f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n[ext]\n{ext}"
        )
        return path

    def issue(
        self,
        name: str,
        *,
        usage: Literal["server", "client", "signing"] = "server",
        sans: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost"),
        rsa: bool = False,
    ) -> CertPair:
        """A leaf signed by the CA: a TLS server or client cert, or a token-signing cert."""
        with self._lock:  # files of registries sharing this CA must not overwrite each other
            self._serial += 1
            stem = f"{name.replace(' ', '-')}-{self._serial}"
        ext = "basicConstraints = critical,CA:FALSE\n"
        ext += "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
        ext += "keyUsage = critical,digitalSignature" + (",keyEncipherment\n" if rsa else "\n")
        if usage != "signing":
            ext += f"extendedKeyUsage = {'serverAuth' if usage == 'server' else 'clientAuth'}\n"
            if sans:
                ext += f"subjectAltName = {','.join(sans)}\n"
        cnf = self._cnf(stem, name, ext)
        pair = CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        csr = self.dir / f"{stem}.csr"
        keyopts = (
            ["-newkey", "rsa:2048"]
            if rsa
            else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        )
        _run("openssl", "req", "-new", "-config", cnf, *keyopts, "-nodes",
             "-keyout", pair.key, "-out", csr)  # fmt: skip
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca_path, "-CAkey", self.ca_key,
             "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "825",
             "-extfile", cnf, "-extensions", "ext", "-out", pair.cert)  # fmt: skip
        return pair

    def client_context(self, client_cert: CertPair | None = None) -> ssl.SSLContext:
        """An SSL client context trusting only this CA (and presenting `client_cert`)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if client_cert:
            ctx.load_cert_chain(client_cert.cert, client_cert.key)
        return ctx

    def server_context(self, pair: CertPair) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair.cert, pair.key)
        return ctx


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry; distribution accepts bcrypt hashes only (cost 4 keeps it fast)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


# ---------------------------------------------------------------- token server


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (GET docker-style or POST OAuth2)."""

    method: str
    service: str | None
    scopes: tuple[str, ...]
    authorization: bool  # an Authorization header was sent
    username: str | None  # who authenticated (None: anonymous or rejected)
    grant_type: str | None  # POST only: password | refresh_token
    account: str | None
    status: int
    at: float = field(default_factory=time.time)


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """`repository:team/app:pull,push` -> ('repository', 'team/app', ['pull', 'push'])."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        raise ValueError(f"bad scope {scope!r}")
    return kind, name, [a for a in actions.split(",") if a]


class TokenServer:
    """A registry token server (docker token spec + OAuth2 POST) on loopback, in a thread.

    It checks basic credentials (or the password / refresh-token grants), grants every
    requested action to an authenticated user and `pull` to anonymous ones when
    `anonymous_pull` (else anonymous requests get 401), and signs RS256 JWTs whose `x5c`
    header carries the signing cert, which the registry verifies against its CA bundle.
    """

    def __init__(
        self,
        pki: Pki,
        *,
        users: Mapping[str, str],
        tls: bool = True,
        service: str = TOKEN_SERVICE,
        issuer: str = TOKEN_ISSUER,
        expires_in: int = 300,
        anonymous_pull: bool = False,
    ) -> None:
        self.pki = pki
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.anonymous_pull = anonymous_pull
        self.refresh_tokens: dict[str, str] = {}  # refresh / identity token -> username
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self.signer = pki.issue("token signer", usage="signing", rsa=True)
        pem = self.signer.cert.read_text()
        self._x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(pem)).decode()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._httpd.daemon_threads = True
        self._httpd.token_server = self  # type: ignore[attr-defined]
        if tls:
            ctx = pki.server_context(pki.issue("token server"))
            self._httpd.socket = ctx.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        port = self._httpd.server_address[1]
        self.realm = f"{'https' if tls else 'http'}://127.0.0.1:{port}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="token-server", daemon=True
        )
        self._thread.start()

    @property
    def root_cert_bundle(self) -> Path:
        """The registry's `auth.token.rootcertbundle`: the CA that issued the signer."""
        return self.pki.ca_path

    def mint(
        self,
        access: Sequence[tuple[str, str, Sequence[str]]],
        *,
        subject: str = "",
        expires_in: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """A signed JWT granting `access` [(type, name, actions)] (no HTTP, not recorded)."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,  # a string: distribution 2.8 rejects a list
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": [{"type": t, "name": n, "actions": list(a)} for t, n, a in access],
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = _run("openssl", "dgst", "-sha256", "-sign", self.signer.key,
                         stdin=signing_input.encode())  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"

    def grant(
        self, username: str | None, scopes: Sequence[str]
    ) -> list[tuple[str, str, list[str]]]:
        """What a token for `username` (None: anonymous) may do of what was asked."""
        granted = []
        for scope in scopes:
            kind, name, actions = parse_scope(scope)
            if username is None:
                actions = [a for a in actions if a == "pull"] if self.anonymous_pull else []
            granted.append((kind, name, actions))
        return granted

    def record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def clear(self) -> None:
        """Forget recorded requests (between tests sharing a session registry)."""
        with self._lock:
            self.requests.clear()

    def count(self, scope: str | None = None) -> int:
        """How many token requests succeeded (for `scope`, if given)."""
        with self._lock:
            return sum(
                1 for r in self.requests if r.status == 200 and (scope is None or scope in r.scopes)
            )

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _TokenHandler(BaseHTTPRequestHandler):
    server_version = "criproxy-test-token-server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `TokenServer.requests` instead."""

    @property
    def ts(self) -> TokenServer:
        server: TokenServer = self.server.token_server  # type: ignore[attr-defined]
        return server

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="criproxy-test-token"')
        self.end_headers()
        self.wfile.write(data)

    def _basic(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return user, password

    def _check(self, creds: tuple[str, str] | None) -> str | Literal[False] | None:
        """The username, None for anonymous, False for bad credentials."""
        if creds is None:
            return None
        user, password = creds
        if self.ts.users.get(user) == password and password:
            return user
        return False

    def _issue(
        self,
        method: str,
        service: str | None,
        scopes: list[str],
        user: str | Literal[False] | None,
        *,
        grant_type: str | None = None,
        account: str | None = None,
        offline: bool = False,
    ) -> None:
        ts = self.ts
        authorization = "Authorization" in self.headers
        bad_service = service is not None and service != ts.service
        if user is False or bad_service or (user is None and not ts.anonymous_pull):
            status = 400 if bad_service else 401
            ts.record(TokenRequest(method, service, tuple(scopes), authorization, None,
                                   grant_type, account, status))  # fmt: skip
            self._reply(status, {"errors": [{"code": "UNAUTHORIZED", "message": "denied"}]})
            return
        try:
            access = ts.grant(user, scopes)
        except ValueError as exc:
            ts.record(TokenRequest(method, service, tuple(scopes), authorization, user,
                                   grant_type, account, 400))  # fmt: skip
            self._reply(400, {"errors": [{"code": "INVALID_SCOPE", "message": str(exc)}]})
            return
        token = ts.mint(access, subject=user or "")
        issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": ts.expires_in,
            "issued_at": issued,
        }
        if method == "POST":
            body["scope"] = " ".join(scopes)
            if offline and user:
                refresh = secrets.token_urlsafe(24)
                with ts._lock:
                    ts.refresh_tokens[refresh] = user
                body["refresh_token"] = refresh
        ts.record(TokenRequest(method, service, tuple(scopes), authorization, user,
                               grant_type, account, 200))  # fmt: skip
        self._reply(200, body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        query = urllib.parse.parse_qs(url.query)
        self._issue(
            "GET",
            query.get("service", [None])[0],
            query.get("scope", []),
            self._check(self._basic()),
            account=query.get("account", [None])[0],
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": self.path}]})
            return

        def one(key: str) -> str | None:
            return form.get(key, [None])[0]

        grant_type = one("grant_type")
        user: str | Literal[False] | None
        if grant_type == "password":
            user = self._check((one("username") or "", one("password") or ""))
        elif grant_type == "refresh_token":
            with self.ts._lock:
                user = self.ts.refresh_tokens.get(one("refresh_token") or "", False)
        else:
            user = False
        scopes = (one("scope") or "").split()
        self._issue("POST", one("service"), scopes, user, grant_type=grant_type,
                    offline=one("access_type") == "offline")  # fmt: skip


# ---------------------------------------------------------------- the registry


def _to_yaml(obj: Mapping[str, Any], indent: int = 0) -> str:
    """A tiny YAML emitter for the registry config (JSON-quoted scalars are valid YAML)."""
    lines = []
    pad = "  " * indent
    for key, value in obj.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key}:\n{_to_yaml(value, indent + 1)}")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  - {json.dumps(v)}" for v in value)
        else:
            lines.append(f"{pad}{key}: {json.dumps(value)}")
    return "\n".join(lines)


@dataclass
class Registry:
    """A running docker-registry and an authorised client for setting it up.

    `push`/`get_*` act as the registry's administrator (basic credentials, or tokens minted
    without going through the token server), so they never show up in `token_server.requests`.
    """

    workdir: Path
    host: str
    scheme: Literal["http", "https"]
    auth: AuthKind
    process: subprocess.Popen[bytes]
    pki: Pki | None = None
    server_cert: CertPair | None = None
    client_cert: CertPair | None = None  # set when the registry requires client certs
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def ca_path(self) -> Path | None:
        return self.pki.ca_path if self.pki and self.scheme == "https" else None

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def reference(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """`127.0.0.1:PORT/repo[:tag][@digest]`, as a CRI client names the image."""
        ref = f"{self.host}/{repo}"
        if tag:
            ref += f":{tag}"
        if digest:
            ref += f"@{digest}"
        return ref

    # ------------------------------------------------------------ HTTP client

    def ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext | bool:
        """What httpx should `verify` with: this CA (and our client cert under mTLS)."""
        if self.scheme == "http" or self.pki is None:
            return True
        return self.pki.client_context(self.client_cert if client_cert else None)

    def client(self, *, authenticated: bool = True, **kwargs: Any) -> httpx.Client:
        """An httpx client for this registry; `authenticated=False` sends no credentials."""
        auth: httpx.Auth | None = None
        if authenticated and self.auth == "basic":
            assert self.username is not None and self.password is not None
            auth = httpx.BasicAuth(self.username, self.password)
        elif authenticated and self.auth == "token":
            assert self.token_server is not None
            auth = _MintedBearer(self.token_server)
        return httpx.Client(
            base_url=self.url, verify=self.ssl_context(), auth=auth, timeout=30.0, **kwargs
        )

    # ------------------------------------------------------------ push and inspect

    def push(self, repo: str, image: Image | Index, tag: str | None = None) -> Descriptor:
        """Upload every blob and manifest of `image` (an index with its children), tagged
        `tag` or by digest only; returns the top-level descriptor."""
        with self.client() as c:
            if isinstance(image, Index):
                for child in image.images:
                    self._push_image(c, repo, child, None)
                self._put_manifest(c, repo, tag or image.digest, image.media_type, image.index)
            else:
                self._push_image(c, repo, image, tag)
        return image.descriptor

    def _push_image(self, c: httpx.Client, repo: str, image: Image, tag: str | None) -> None:
        for digest, data in image.blobs.items():
            self._push_blob(c, repo, digest, data)
        self._put_manifest(c, repo, tag or image.digest, image.media_type, image.manifest)

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        """Upload one blob (monolithic: POST for a session, then PUT with ?digest=)."""
        with self.client() as c:
            self._push_blob(c, repo, digest, data)

    def _push_blob(self, c: httpx.Client, repo: str, digest: str, data: bytes) -> None:
        if c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
            return
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        _expect(r, 202)
        location = httpx.URL(self.url).join(r.headers["Location"])
        r = c.put(
            location.copy_merge_params({"digest": digest}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        _expect(r, 201)

    def push_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> str:
        """PUT raw manifest bytes under a tag or digest; returns the registry's digest."""
        with self.client() as c:
            return self._put_manifest(c, repo, reference, media_type, data)

    def _put_manifest(
        self, c: httpx.Client, repo: str, reference: str, media_type: str, data: bytes
    ) -> str:
        r = c.put(
            f"/v2/{repo}/manifests/{reference}", content=data, headers={"Content-Type": media_type}
        )
        _expect(r, 201)
        return str(r.headers.get("Docker-Content-Digest", ""))

    def get_manifest(
        self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> httpx.Response:
        with self.client() as c:
            return c.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})

    def get_blob(self, repo: str, digest: str) -> bytes:
        with self.client() as c:
            r = c.get(f"/v2/{repo}/blobs/{digest}")
            _expect(r, 200)
            return r.content

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (untags it everywhere in `repo`)."""
        with self.client() as c:
            _expect(c.delete(f"/v2/{repo}/manifests/{digest}"), 202)

    def tags(self, repo: str) -> list[str]:
        """The repository's tags; [] also when it holds untagged manifests only (2.8: 404)."""
        with self.client() as c:
            r = c.get(f"/v2/{repo}/tags/list")
            if r.status_code == 404:
                return []
            _expect(r, 200)
            tags: list[str] = r.json().get("tags") or []
            return tags

    # ------------------------------------------------------------ storage faults

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes."""
        algo, _, hexd = digest.partition(":")
        return self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def corrupt_blob(self, digest: str, replacement: bytes | None = None) -> None:
        """Make the registry serve other bytes (same length) under `digest`."""
        path = self.blob_path(digest)
        original = path.read_bytes()
        data = replacement if replacement is not None else bytes(b ^ 0xFF for b in original)
        if len(data) != len(original) or data == original:
            raise ValueError("a corrupt blob needs different bytes of the same length")
        path.write_bytes(data)

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop the registry and its token server; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _MintedBearer(httpx.Auth):
    """Answers a registry's Bearer challenge with a token minted for exactly its scope."""

    def __init__(self, token_server: TokenServer) -> None:
        self.ts = token_server

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer "):
            return
        params = dict(_challenge_params(challenge[7:]))
        scopes = params.get("scope", "").split()
        access = [parse_scope(s) for s in scopes]
        request.headers["Authorization"] = f"Bearer {self.ts.mint(access, subject='admin')}"
        yield request


def _challenge_params(text: str) -> Iterator[tuple[str, str]]:
    """key="value" pairs of a WWW-Authenticate challenge."""
    for m in re.finditer(r'(\w+)="([^"]*)"', text):
        yield m.group(1), m.group(2)


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise RegistryError(
            f"{r.request.method} {r.request.url}: HTTP {r.status_code}, want {status}: "
            f"{r.text[:500]}"
        )


def _wait_ready(reg: Registry, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    verify = reg.ssl_context()
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            raise RegistryError(
                f"docker-registry exited with {reg.process.returncode}: "
                f"{reg.log_path.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(f"{reg.url}/v2/", verify=verify, timeout=2.0)
            if r.status_code in (200, 401):
                return
        time.sleep(0.02)
    raise RegistryError(f"docker-registry on {reg.host} did not answer /v2/ in {timeout}s")


def registry_config(
    *,
    port: int,
    storage: Path,
    tls: CertPair | None = None,
    client_cas: Sequence[Path] = (),
    htpasswd: Path | None = None,
    token: TokenServer | None = None,
) -> dict[str, Any]:
    """The registry's config.yml as a dict (see `_to_yaml` for the file)."""
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),  # else: a warning and per-process upload state
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
        if client_cas:
            http["tls"]["clientcas"] = [str(p) for p in client_cas]
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "error", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
        "health": {"storagedriver": {"enabled": False}},
        # validation is on by default and then allows no foreign-layer URL at all
        "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "criproxy-test-registry", "path": str(htpasswd)}}
    elif token is not None:
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.root_cert_bundle),
            }
        }
    return config


def start_registry(
    workdir: Path,
    *,
    tls: bool = False,
    client_certs: bool = False,
    auth: AuthKind = "none",
    pki: Pki | None = None,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    anonymous_pull: bool = False,
    token_expires_in: int = 300,
) -> Registry:
    """Start docker-registry on 127.0.0.1:<free port> with storage under `workdir`.

    `client_certs` requires TLS client certs signed by the CA (mTLS); `auth="token"` also
    starts a TokenServer (TLS when the registry is). A new CA is made unless `pki` is given.
    """
    reason = missing_requirements(tls=tls, auth=auth)
    if reason:
        raise RegistryError(reason)
    if client_certs and not tls:
        raise ValueError("client certificates need tls=True")
    workdir.mkdir(parents=True, exist_ok=True)
    if pki is None and (tls or auth == "token"):
        pki = Pki(workdir / "pki")
    server_cert = pki.issue("registry") if tls and pki else None
    client_cert = pki.issue("registry client", usage="client") if client_certs and pki else None
    htpasswd: Path | None = None
    token_server: TokenServer | None = None
    if auth == "basic":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(username, password))
    elif auth == "token":
        assert pki is not None
        token_server = TokenServer(
            pki,
            users={username: password},
            tls=tls,
            expires_in=token_expires_in,
            anonymous_pull=anonymous_pull,
        )
    last_error: RegistryError | None = None
    for _attempt in range(3):  # a free port can be taken before the registry binds it
        port = free_port()
        config = registry_config(
            port=port,
            storage=workdir / "storage",
            tls=server_cert,
            client_cas=[pki.ca_path] if client_cert and pki else [],
            htpasswd=htpasswd,
            token=token_server,
        )
        (workdir / "config.yml").write_text(_to_yaml(config) + "\n")
        log = (workdir / "registry.log").open("wb")
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(workdir / "config.yml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        log.close()
        reg = Registry(
            workdir=workdir,
            host=f"127.0.0.1:{port}",
            scheme="https" if tls else "http",
            auth=auth,
            process=process,
            pki=pki,
            server_cert=server_cert,
            client_cert=client_cert,
            username=username if auth != "none" else None,
            password=password if auth != "none" else None,
            token_server=token_server,
        )
        try:
            _wait_ready(reg)
        except RegistryError as exc:
            last_error = exc
            if process.poll() is None:
                process.kill()
                process.wait()
            if "address already in use" in str(exc):
                continue
            break
        atexit.register(_stop_quietly, reg)
        return reg
    if token_server is not None:
        token_server.stop()
    raise last_error or RegistryError("docker-registry did not start")


def _stop_quietly(reg: Registry) -> None:
    with contextlib.suppress(Exception):
        reg.stop()


# A shape for factories handed to tests (fixtures.registry_factory).
RegistryFactory = Callable[..., Registry]
