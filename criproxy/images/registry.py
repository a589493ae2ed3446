"""The OCI distribution protocol: resolve a reference, fetch manifests and blobs.

One `Registry` per process keeps HTTP connections (one client per TLS set-up) and bearer
tokens; a `Repository` is one repository of one registry, tried host by host: mirrors in
order, then the registry itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
import httpx
import structlog

from criproxy import tracing
from criproxy.containerd.types import Descriptor
from criproxy.errors import CriproxyError, DataLoss, NotFound, Unauthenticated, Unavailable
from criproxy.images.auth import (
    Challenge,
    Credentials,
    TokenCache,
    basic_header,
    parse_challenges,
)
from criproxy.images.hosts import (
    DOCKER_HUB,
    DOCKER_HUB_SERVER,
    PULL,
    RESOLVE,
    HostsConfig,
    RegistryHost,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

    from criproxy.images.reference import Reference

log = structlog.get_logger("criproxy.images.registry")

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MAX_MANIFEST_SIZE = 8 * 1024 * 1024
_CHUNK = 256 * 1024
_DIRECT_MIN = 1024 * 1024
"""Bodies at least this long are read straight from the socket (`_body`)."""
DOCKER_HUB_HOST = DOCKER_HUB_SERVER.removeprefix("https://")
CONNECT_TIMEOUT = 10.0
_BODY_THREADS = 64
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class _TlsKey:
    skip_verify: bool
    ca_files: tuple[str, ...]
    client_certs: tuple[tuple[str, str], ...]


def _ssl_context(key: _TlsKey) -> ssl.SSLContext | bool:
    if key.skip_verify and not key.client_certs:
        return False
    context = ssl.create_default_context()  # the system store, as containerd uses it
    if key.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for ca in key.ca_files:
        context.load_verify_locations(cafile=ca)
    for cert, keyfile in key.client_certs:
        context.load_cert_chain(cert, keyfile)
    return context


_Client = TypeVar("_Client", httpx.AsyncClient, httpx.Client)


def _cached(
    clients: dict[_TlsKey, _Client], host: RegistryHost, make: Callable[..., _Client]
) -> _Client:
    """The client for `host`'s TLS settings, made on first use (one per settings)."""
    key = _TlsKey(host.skip_verify, host.ca_files, host.client_certs)
    client = clients.get(key)
    if client is None:
        try:
            verify = _ssl_context(key)
        except (OSError, ssl.SSLError) as err:
            raise Unavailable(f"TLS set-up for {host.host} failed: {err}") from None
        client = clients[key] = make(
            verify=verify,
            follow_redirects=True,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            headers={"User-Agent": "criproxy"},
        )
    return client


@dataclass
class Registry:
    """Process-wide registry access: HTTP clients, token cache, hosts and config credentials."""

    hosts: HostsConfig
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    """Credentials from the config, by registry host."""
    tokens: TokenCache = field(default_factory=TokenCache)
    _clients: dict[_TlsKey, httpx.AsyncClient] = field(default_factory=dict)
    _blocking_clients: dict[_TlsKey, httpx.Client] = field(default_factory=dict)
    _plain_http: set[str] = field(default_factory=set)
    _body_limiter: anyio.CapacityLimiter | None = None

    def client(self, host: RegistryHost) -> httpx.AsyncClient:
        return _cached(self._clients, host, httpx.AsyncClient)

    def blocking_client(self, host: RegistryHost) -> httpx.Client:
        """A client for bodies read in a worker thread: big downloads cost about half the
        CPU there that they cost through the event loop's TLS and HTTP layers."""
        return _cached(self._blocking_clients, host, httpx.Client)

    def body_threads(self) -> anyio.CapacityLimiter:
        """The worker threads bodies are read in, a limiter of their own: a download holds
        its thread for minutes and must not starve anything else that uses worker threads."""
        if self._body_limiter is None:  # made in the event loop, on first use
            self._body_limiter = anyio.CapacityLimiter(_BODY_THREADS)
        return self._body_limiter

    def repository(self, ref: Reference, credentials: Credentials | None = None) -> Repository:
        creds = credentials if credentials and not credentials.anonymous else None
        return Repository(self, ref, creds or self.credentials.get(ref.domain, Credentials()))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        for blocking in self._blocking_clients.values():
            blocking.close()
        self._blocking_clients.clear()


class Repository:
    """One repository, reached through its hosts in order (mirrors, then the registry)."""

    def __init__(self, registry: Registry, ref: Reference, credentials: Credentials) -> None:
        self._registry = registry
        self.ref = ref
        self._credentials = credentials
        self._hosts = registry.hosts.hosts(ref.domain)
        self._challenges: dict[str, Challenge] = {}
        self.scope = f"repository:{ref.path}:pull"

    # --- one request, with auth -----------------------------------------------------

    def _url(self, host: RegistryHost, scheme: str, kind: str, obj: str) -> str:
        url = f"{scheme}://{host.host}{host.path}/{self.ref.path}/{kind}/{obj}"
        if host.host != self.ref.domain and not (
            self.ref.domain == DOCKER_HUB and host.host == DOCKER_HUB_HOST
        ):
            url += f"?ns={self.ref.domain}"  # tells a mirror which registry is meant
        return url

    def _credentials_for(self, host: RegistryHost) -> Credentials:
        return self._credentials.for_host(self.ref.domain, host.host)

    async def _auth_header(self, host: RegistryHost) -> dict[str, str]:
        challenge = self._challenges.get(host.host)
        if challenge is None:
            return {}
        credentials = self._credentials_for(host)
        if challenge.scheme == "basic":
            if credentials.username:
                return dict(basic_header(credentials))
            return {}
        if credentials.registry_token:
            return {"Authorization": f"Bearer {credentials.registry_token}"}
        client = self._registry.client(host)
        token = await self._registry.tokens.fetch(client, challenge, self.scope, credentials)
        return {"Authorization": f"Bearer {token}"}

    def _remember_challenge(self, host: RegistryHost, response: httpx.Response) -> bool:
        """Keep what the 401 asks for; False when it asks for nothing criproxy can answer."""
        credentials = self._credentials_for(host)
        for challenge in parse_challenges(response.headers.get("www-authenticate", "")):
            if challenge.scheme == "bearer" or (
                challenge.scheme == "basic" and credentials.username
            ):
                self._challenges[host.host] = challenge
                return True
        return False

    @contextlib.asynccontextmanager
    async def _send(
        self,
        host: RegistryHost,
        method: str,
        kind: str,
        obj: str,
        headers: Mapping[str, str],
        *,
        blocking: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """One request to one host; answers a 401 challenge once; the body streams
        (`blocking`: a response whose body a worker thread reads, with `iter_raw`)."""
        client = self._registry.client(host)
        blocking_client = self._registry.blocking_client(host) if blocking else None
        schemes = [host.scheme]
        if host.fallback_http and host.host not in self._registry._plain_http:
            schemes.append("http")
        elif host.host in self._registry._plain_http:
            schemes = ["http"]
        for attempt in range(2):
            all_headers = {**dict(host.headers), **headers, **await self._auth_header(host)}
            response = None
            for scheme in schemes:
                request = (blocking_client or client).build_request(
                    method, self._url(host, scheme, kind, obj), headers=all_headers
                )
                try:
                    with tracing.client_span(
                        f"registry {method} {kind}", host=host.host, url=str(request.url)
                    ) as span:
                        if blocking_client is not None:
                            response = await _blocking_send(blocking_client, request)
                        else:
                            response = await client.send(request, stream=True)
                        if span is not None:
                            span.set_attribute("http.response.status_code", response.status_code)
                except httpx.ConnectError as err:
                    if scheme == "https" and len(schemes) > 1 and _tls_refused(err):
                        continue
                    raise
                if scheme == "http" and host.scheme == "https":
                    self._registry._plain_http.add(host.host)
                break
            assert response is not None
            if response.status_code == 401 and attempt == 0:
                await _close(response)
                if self._remember_challenge(host, response):
                    continue
                raise Unauthenticated(
                    f"registry {host.host} requires credentials for {self.ref.name} and none "
                    "were given"
                )
            if response.status_code in (401, 403):
                await _close(response)
                raise Unauthenticated(
                    f"registry {host.host} refused the credentials for {self.ref.name} "
                    f"(HTTP {response.status_code})"
                )
            try:
                yield response
            finally:
                await _close(response)
            return

    async def _each_host(self, capability: str) -> AsyncIterator[RegistryHost]:
        hosts = [h for h in self._hosts if h.can(capability)]
        if not hosts:
            raise Unavailable(f"no host of {self.ref.domain} may {capability} (hosts.toml)")
        for host in hosts:
            yield host

    # --- the protocol ----------------------------------------------------------------

    async def resolve(self) -> Descriptor:
        """Resolve the tag or digest to the descriptor of its manifest (or index)."""
        errors: list[str] = []
        async for host in self._each_host(RESOLVE):
            try:
                desc = await self._resolve_at(host)
            except _HostMiss as miss:
                errors.append(str(miss))
                continue
            if desc is not None:
                return desc
            errors.append(f"{host.host}: not found")
        raise _summarise(self.ref, errors, "resolve")

    async def _resolve_at(self, host: RegistryHost) -> Descriptor | None:
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        obj = self.ref.object
        try:
            for method in ("HEAD", "GET"):
                async with self._send(host, method, "manifests", obj, accept) as resp:
                    if resp.status_code == 404:
                        return None
                    if resp.status_code != 200:
                        if method == "HEAD":
                            continue  # some registries do not answer HEAD; try GET
                        raise _HostMiss(f"{host.host}: HTTP {resp.status_code}")
                    media_type = resp.headers.get("content-type", "").split(";")[0].strip()
                    digest = resp.headers.get("docker-content-digest", "")
                    size = int(resp.headers.get("content-length", "0") or 0)
                    if method == "HEAD" and (not digest or not size) and not self.ref.digest:
                        continue
                    if method == "GET":
                        body = await _read_limited(resp, MAX_MANIFEST_SIZE)
                        computed = "sha256:" + hashlib.sha256(body).hexdigest()
                        if self.ref.digest and computed != self.ref.digest:
                            raise DataLoss(
                                f"manifest {self.ref} from {host.host} has digest {computed}"
                            )
                        digest, size = computed, len(body)
                    digest = self.ref.digest or digest
                    if media_type not in MANIFEST_TYPES:
                        media_type = _sniff_media_type(media_type)
                    return Descriptor(media_type, digest, size)
        except httpx.HTTPError as err:
            raise _HostMiss(f"{host.host}: {_describe(err)}") from None
        return None

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """A manifest or index by digest, verified."""
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        chunks: list[bytes] = []
        async for chunk in self._fetch("manifests", desc, 0, accept):
            chunks.append(chunk)
        body = b"".join(chunks)
        _verify(body, desc, "manifest")
        return body

    async def fetch_blob(
        self, desc: Descriptor, offset: int = 0, urls: tuple[str, ...] = ()
    ) -> AsyncIterator[bytes]:
        """The bytes of a blob from `offset` on (a Range request when resuming).

        A non-distributable layer names `urls`; they are tried first, without credentials,
        then the registry (as containerd's fetcher does).
        """
        for url in urls:
            if not url.startswith(("http://", "https://")):
                continue
            try:
                async for chunk in self._fetch_url(url, offset):
                    yield chunk
                return
            except _HostMiss as miss:
                log.info("foreign layer URL failed; trying the registry", url=url, error=str(miss))
        async for chunk in self._fetch("blobs", desc, offset, {}):
            yield chunk

    async def stream_blob(
        self, desc: Descriptor, offset: int, urls: tuple[str, ...], sink: Callable[[bytes], None]
    ) -> None:
        """`fetch_blob`, with the body read in a worker thread that hands each chunk to
        `sink` there: CPU work on the bytes (hashing, inflating, writing) happens beside
        the reading, with no trip through the event loop per chunk."""
        if urls:  # foreign layers: rare, and their URLs are tried through the event loop
            async for chunk in self.fetch_blob(desc, offset, urls):
                await anyio.to_thread.run_sync(sink, chunk)
            return
        async with self._open("blobs", desc, offset, {}, blocking=True) as (resp, skip):
            await _pump(resp, skip, sink, self._registry.body_threads())

    async def _fetch_url(self, url: str, offset: int) -> AsyncIterator[bytes]:
        client = self._registry.client(RegistryHost("https", "", ""))
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        started = False
        try:
            async with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code not in (200, 206):
                    raise _HostMiss(f"HTTP {resp.status_code}")
                skip = offset if (offset and resp.status_code == 200) else 0
                started = True
                async for raw in resp.aiter_raw(_CHUNK):
                    chunk, skip = _skip(raw, skip)
                    if chunk:
                        yield chunk
        except httpx.HTTPError as err:
            if started:
                raise Unavailable(f"download from {url} broke off: {_describe(err)}") from None
            raise _HostMiss(_describe(err)) from None

    async def _fetch(
        self, kind: str, desc: Descriptor, offset: int, headers: Mapping[str, str]
    ) -> AsyncIterator[bytes]:
        async with self._open(kind, desc, offset, headers) as (resp, first_skip):
            skip = first_skip
            async for raw in resp.aiter_raw(_CHUNK):
                chunk, skip = _skip(raw, skip)
                if chunk:
                    yield chunk

    @contextlib.asynccontextmanager
    async def _open(
        self,
        kind: str,
        desc: Descriptor,
        offset: int,
        headers: Mapping[str, str],
        *,
        blocking: bool = False,
    ) -> AsyncIterator[tuple[httpx.Response, int]]:
        """The first host that has the object, its response (body unread) and how many
        bytes of it to skip (a server that ignored the Range header); a body that breaks
        off is `Unavailable`, so the caller resumes."""
        errors: list[str] = []
        async for host in self._each_host(PULL):
            request_headers = dict(headers)
            if offset:
                request_headers["Range"] = f"bytes={offset}-"
            try:
                async with self._send(
                    host, "GET", kind, desc.digest, request_headers, blocking=blocking
                ) as resp:
                    if resp.status_code == 404:
                        errors.append(f"{host.host}: not found")
                        continue
                    if resp.status_code not in (200, 206):
                        errors.append(f"{host.host}: HTTP {resp.status_code}")
                        continue
                    try:
                        yield resp, offset if (offset and resp.status_code == 200) else 0
                    except httpx.HTTPError as err:
                        raise Unavailable(
                            f"download of {desc.digest} from {host.host} broke off: "
                            f"{_describe(err)}"
                        ) from None
                    return
            except httpx.HTTPError as err:
                errors.append(f"{host.host}: {_describe(err)}")
        raise _summarise(self.ref, errors, f"fetch {desc.digest} of")


class _HostMiss(Exception):
    """This host did not work out; the next one may."""


def _skip(raw: bytes, skip: int) -> tuple[bytes, int]:
    """Drop what is left of `skip` from the front of `raw`."""
    if not skip:
        return raw, 0
    cut = min(skip, len(raw))
    return raw[cut:], skip - cut


async def _close(response: httpx.Response) -> None:
    if isinstance(response.stream, httpx.SyncByteStream):
        await anyio.to_thread.run_sync(response.close)
    else:
        await response.aclose()


async def _pump(
    resp: httpx.Response, skip: int, sink: Callable[[bytes], None], limiter: anyio.CapacityLimiter
) -> None:
    """Read a blocking response's body in a worker thread into `sink`.

    Cancelled (the pull gave up), the connection is shut down so that a read blocked on
    a silent registry returns, and a thread that started is waited for: `sink` writes
    through file descriptors its caller closes only once no thread can use them. A
    thread that had not started yet never will (it finds `stop` set).
    """
    stop = threading.Event()
    finished = threading.Event()
    lock = threading.Lock()
    started = False

    def run() -> None:
        nonlocal skip, started
        with lock:
            if stop.is_set():
                return
            started = True
        try:
            for raw in _body(resp):
                if stop.is_set():
                    raise anyio.get_cancelled_exc_class()()
                chunk, skip = _skip(raw, skip)
                if chunk:
                    sink(chunk)
        finally:
            finished.set()

    try:
        await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
    except anyio.get_cancelled_exc_class():
        with lock:
            stop.set()
            running = started
        if running:
            stream = resp.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
        raise


def _body(resp: httpx.Response) -> Iterator[bytes]:
    """A blocking response's raw body, in chunks of up to _CHUNK.

    A long HTTP/1.1 body of known length is read straight from the connection's socket
    once the HTTP parser has handed over what it had buffered: through httpcore and h11
    every TLS record (16 KiB at most) is an HTTP event's worth of Python (some 40% of
    criproxy's CPU for a large pull), where here it is a `recv_into`. The parser never
    sees the body's end, so the connection is closed with the response, not pooled.
    Anything else (a chunked body, a stream criproxy cannot read itself, such as TLS
    inside a TLS proxy tunnel) goes through httpx.
    """
    sock, length = _direct(resp)
    if sock is None:
        yield from resp.iter_raw(_CHUNK)
        return
    parsed = resp.iter_raw()  # kept open while the socket is read: closing it closes both
    try:
        first = next(parsed, b"")  # what the parser had buffered: one event's worth
        if first:
            yield first
        remaining = length - len(first)
        view = memoryview(bytearray(min(_CHUNK, max(remaining, 1))))
        sock.settimeout(READ_TIMEOUT)
        while remaining > 0:
            filled, broken = _fill(sock, view[: min(len(view), remaining)], resp.request)
            remaining -= filled
            if filled:  # what arrived before a break counts: the resume asks for the rest
                yield bytes(view[:filled])
            if broken is not None:
                raise broken
    finally:
        close = getattr(parsed, "close", None)  # a generator, typed as an iterator
        if close is not None:
            close()


def _fill(
    sock: socket.socket, view: memoryview, request: httpx.Request
) -> tuple[int, httpx.TransportError | None]:
    """Read until `view` is full: how much arrived, and the error (as httpx names it) that
    stopped it short."""
    filled = 0
    while filled < len(view):
        try:
            got = sock.recv_into(view[filled:])
        except TimeoutError:
            return filled, httpx.ReadTimeout("the registry sent nothing", request=request)
        except OSError as err:
            return filled, httpx.ReadError(str(err), request=request)
        if got == 0:
            return filled, httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body",
                request=request,
            )
        filled += got
    return filled, None


def _direct(resp: httpx.Response) -> tuple[socket.socket | None, int]:
    """The socket a body may be read from directly, and the body's length."""
    headers = resp.headers
    if resp.http_version != "HTTP/1.1" or "transfer-encoding" in headers:
        return None, 0
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        return None, 0
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if length < _DIRECT_MIN or not isinstance(sock, socket.socket):
        return None, 0
    if resp.request.url.scheme == "https" and not (
        isinstance(sock, ssl.SSLSocket) and sock.server_hostname == resp.request.url.host
    ):
        return None, 0  # TLS to a proxy around the registry's TLS: only httpcore unwraps it
    return sock, length


async def _blocking_send(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """`client.send` (headers only; the body streams) in a worker thread, given up at
    once when cancelled: a response that arrives after that is closed, not leaked."""
    lock = threading.Lock()
    abandoned = False
    arrived: list[httpx.Response] = []

    def send() -> httpx.Response:
        response = client.send(request, stream=True)
        with lock:
            if abandoned:
                response.close()
            else:
                arrived.append(response)
        return response

    try:
        return await anyio.to_thread.run_sync(send, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        with lock:
            abandoned = True
        for late in arrived:
            late.close()
        raise


def _summarise(ref: Reference, errors: list[str], what: str) -> CriproxyError:
    if errors and all(e.endswith("not found") for e in errors):
        return NotFound(f"failed to {what} {ref}: not found ({'; '.join(errors)})")
    return Unavailable(f"failed to {what} {ref}: {'; '.join(errors)}")


def _describe(err: httpx.HTTPError) -> str:
    if isinstance(err, httpx.TimeoutException):
        return f"timed out ({type(err).__name__})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _tls_refused(err: httpx.ConnectError) -> bool:
    """The server does not speak TLS at all (not: its certificate is bad)."""
    text = str(err).lower()
    return any(
        sign in text
        for sign in (
            "wrong version number",
            "record layer failure",
            "unknown protocol",
            "http request",
            "packet length too long",
        )
    )


def _sniff_media_type(header: str) -> str:
    return header or MEDIA_DOCKER_MANIFEST


async def _read_limited(resp: httpx.Response, limit: int) -> bytes:
    chunks, total = [], 0
    async for chunk in resp.aiter_raw():
        total += len(chunk)
        if total > limit:
            raise DataLoss(f"manifest larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _verify(body: bytes, desc: Descriptor, what: str) -> None:
    algorithm, _, _ = desc.digest.partition(":")
    if algorithm != "sha256":
        raise DataLoss(f"{what} {desc.digest}: unsupported digest algorithm")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if digest != desc.digest or (desc.size and len(body) != desc.size):
        raise DataLoss(
            f"{what} {desc.digest}: registry sent {len(body)} bytes with digest {digest}"
        )
