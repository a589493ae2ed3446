"""Registry hosts from a `certs.d`-style directory, in the `hosts.toml` format containerd uses.

`<config_path>/<registry host>/hosts.toml` (or `_default/hosts.toml`) lists mirrors, tried
in order, then the registry itself (`server`). Each host may be plain HTTP, trust a custom
CA, skip verification, present client certificates and add headers. Without a file, the
registry is reached over HTTPS (Docker Hub at `registry-1.docker.io`); a loopback registry
falls back to plain HTTP.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from criproxy.errors import InvalidArgument

PULL = "pull"
RESOLVE = "resolve"
PUSH = "push"
_CAPABILITIES = (PULL, RESOLVE, PUSH)
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True)
class RegistryHost:
    """One place to fetch from: a mirror or the registry itself."""

    scheme: str
    host: str
    """`host[:port]` as in the URL."""
    path: str
    """The API root, `/v2` unless the config overrides it."""
    capabilities: frozenset[str] = frozenset({PULL, RESOLVE})
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    """(certificate, key) file pairs; the key may be the certificate file itself."""
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    fallback_http: bool = False
    """Loopback registries without a config: HTTPS first, then plain HTTP."""
    mirror: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class HostsConfig:
    """The hosts of every registry, read from `config_path` on each pull (files may change)."""

    config_path: str = ""

    def hosts(self, registry: str) -> list[RegistryHost]:
        """Hosts to try for `registry` (e.g. `docker.io`, `127.0.0.1:5000`), mirrors first."""
        directory = self._directory(registry)
        if directory is not None:
            config_file = directory / "hosts.toml"
            if config_file.exists():
                return _load_hosts_toml(config_file, directory, registry)
            return _certs_directory(directory, registry)
        return [_default_host(registry)]

    def _directory(self, registry: str) -> Path | None:
        if not self.config_path:
            return None
        root = Path(self.config_path)
        candidates = []
        if ":" in registry:
            host, _, port = registry.rpartition(":")
            candidates.append(f"{host}_{port}_")
        candidates += [registry, "_default"]
        for name in candidates:
            path = root / name
            if path.is_dir():
                return path
        return None


def _is_loopback(registry: str) -> bool:
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_host(registry: str) -> RegistryHost:
    if registry == DOCKER_HUB:
        return _from_url(DOCKER_HUB_SERVER, override_path=False)
    if _is_loopback(registry):
        port = urlsplit(f"//{registry}").port
        if port == 80:
            return RegistryHost("http", registry, "/v2")
        if port not in (None, 443):
            return RegistryHost("https", registry, "/v2", fallback_http=True)
    return RegistryHost("https", registry, "/v2")


def _from_url(url: str, *, override_path: bool) -> RegistryHost:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"registry host {url!r}: expected http(s)://host[:port][/path]")
    path = parts.path.rstrip("/")
    if not override_path and not path.endswith("/v2"):
        path += "/v2"
    return RegistryHost(parts.scheme, parts.netloc, path)


def _files(value: object, directory: Path, key: str, origin: Path) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgument(f"{origin}: {key} must be a path or a list of paths")
        path = Path(item)
        out.append(str(path if path.is_absolute() else directory / path))
    return tuple(out)


def _client_certs(value: object, directory: Path, origin: Path) -> tuple[tuple[str, str], ...]:
    items = value if isinstance(value, list) else [value]
    pairs = []
    for item in items:
        if isinstance(item, str):
            (cert,) = _files(item, directory, "client", origin)
            pairs.append((cert, cert))
        elif isinstance(item, list) and len(item) == 2:
            cert, key = _files(item, directory, "client", origin)
            pairs.append((cert, key))
        else:
            raise InvalidArgument(f"{origin}: client must be a path or [cert, key] pairs")
    return tuple(pairs)


def _host_entry(
    url: str, table: dict[str, object], directory: Path, origin: Path, *, mirror: bool
) -> RegistryHost:
    override_path = bool(table.get("override_path", False))
    base = _from_url(url, override_path=override_path)
    capabilities = table.get("capabilities", list(_CAPABILITIES))
    if not isinstance(capabilities, list) or not all(c in _CAPABILITIES for c in capabilities):
        raise InvalidArgument(f"{origin}: capabilities of {url} must be a list of {_CAPABILITIES}")
    headers = table.get("header", {})
    if not isinstance(headers, dict):
        raise InvalidArgument(f"{origin}: header of {url} must be a table")
    header_pairs = []
    for name, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            header_pairs.append((str(name), str(item)))
    return RegistryHost(
        scheme=base.scheme,
        host=base.host,
        path=base.path,
        capabilities=frozenset(str(c) for c in capabilities),
        ca_files=_files(table["ca"], directory, "ca", origin) if "ca" in table else (),
        client_certs=_client_certs(table["client"], directory, origin) if "client" in table else (),
        skip_verify=bool(table.get("skip_verify", False)),
        headers=tuple(header_pairs),
        mirror=mirror,
    )


def _load_hosts_toml(path: Path, directory: Path, registry: str) -> list[RegistryHost]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InvalidArgument(f"registry config {path} cannot be read: {err}") from None
    hosts = []
    for url, table in (data.get("host") or {}).items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"{path}: [host.{url!r}] must be a table")
        hosts.append(_host_entry(url, table, directory, path, mirror=True))
    # The registry itself comes last, whether `server` names it or not (as containerd does).
    top = {k: v for k, v in data.items() if k not in ("host", "server")}
    server = data.get("server")
    if server:
        hosts.append(_host_entry(str(server), top, directory, path, mirror=False))
    else:
        default = _default_host(registry)
        entry = _host_entry(default.base_url, top, directory, path, mirror=False)
        hosts.append(
            RegistryHost(
                entry.scheme,
                entry.host,
                entry.path,
                entry.capabilities,
                entry.ca_files,
                entry.client_certs,
                entry.skip_verify,
                entry.headers,
                fallback_http=default.fallback_http,
            )
        )
    return hosts


def _certs_directory(directory: Path, registry: str) -> list[RegistryHost]:
    """A directory without hosts.toml: docker's certs.d layout (ca.crt, client.cert/.key)."""
    base = _default_host(registry)
    cas = tuple(str(p) for p in sorted(directory.glob("*.crt")))
    certs = []
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        if key.exists():
            certs.append((str(cert), str(key)))
    return [
        RegistryHost(
            base.scheme,
            base.host,
            base.path,
            base.capabilities,
            cas,
            tuple(certs),
            fallback_http=base.fallback_http,
        )
    ]
