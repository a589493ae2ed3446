"""Registry authentication: anonymous, basic, and the bearer-token flow.

Credentials come from the CRI request or from the config. A `WWW-Authenticate: Bearer`
challenge is answered by asking its realm for a token for the repository scope; tokens are
cached per (realm, service, scope, identity) until they expire, and later requests send
them up front instead of taking another 401 first.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import httpx

from criproxy.errors import InvalidArgument, Unauthenticated, Unavailable

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 10.0
_CLIENT_ID = "criproxy"


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""
    """Where the credentials belong (CRI `server_address`); empty: the image's registry."""

    @classmethod
    def from_auth_config(
        cls,
        *,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
        server_address: str = "",
    ) -> Credentials:
        """CRI AuthConfig: `auth` is base64 `user:password` and fills what is not given."""
        if auth and not (username or password):
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("auth.auth is not base64 of 'user:password'") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth.auth is not base64 of 'user:password'")
        return cls(username, password, identity_token, registry_token, server_address)

    def for_host(self, registry: str, host: str) -> Credentials:
        """These credentials if they belong to `registry` or to the `host` asked (a mirror),
        else none, so that a secret for one registry never reaches another."""
        if not self.server_address:
            return self
        wanted = urlsplit(
            self.server_address if "://" in self.server_address else f"//{self.server_address}"
        ).netloc
        if wanted in (registry, host) or (
            registry == "docker.io" and wanted in ("index.docker.io", "registry-1.docker.io")
        ):
            return self
        return Credentials()

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.identity_token or self.registry_token)

    def identity(self) -> str:
        """A cache key part that tells credentials apart without keeping secrets in keys."""
        raw = f"{self.username}\0{self.password}\0{self.identity_token}\0{self.registry_token}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_CHALLENGE = re.compile(
    r"(?:^|,)\s*(Bearer|Basic)\b(.*?)(?=,\s*(?:Bearer|Basic)\b|$)", re.IGNORECASE | re.DOTALL
)
_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse `WWW-Authenticate` (one or several challenges, quoted or token parameters)."""
    out: list[Challenge] = []
    for match in _CHALLENGE.finditer(header):
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _PARAM.finditer(match.group(2))
        }
        out.append(Challenge(match.group(1).lower(), params))
    return out


@dataclass
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens shared by every pull of the process."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}
        self._locks: dict[tuple[str, str, str, str], anyio.Lock] = {}
        self.fetches = 0

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        token = self._tokens.get(key)
        if token is None or token.expires <= time.monotonic():
            return None
        return token.value

    async def fetch(
        self,
        client: httpx.AsyncClient,
        challenge: Challenge,
        scope: str,
        credentials: Credentials,
    ) -> str:
        """A token for `scope`, from the cache or from the challenge's realm (once at a time)."""
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        if not realm:
            raise Unauthenticated("registry sent a Bearer challenge without a realm")
        key = (realm, service, scope, credentials.identity())
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            cached = self.get(key)
            if cached is not None:
                return cached
            value, lifetime = await _request_token(client, realm, service, scope, credentials)
            self.fetches += 1
            self._tokens[key] = _Token(
                value, time.monotonic() + max(lifetime - _EXPIRY_MARGIN, lifetime / 2)
            )
            return value


async def _request_token(
    client: httpx.AsyncClient,
    realm: str,
    service: str,
    scope: str,
    credentials: Credentials,
) -> tuple[str, float]:
    try:
        if credentials.identity_token:
            response = await client.post(
                realm,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": credentials.identity_token,
                    "service": service,
                    "scope": scope,
                    "client_id": _CLIENT_ID,
                },
            )
            if response.status_code in (404, 405):  # no OAuth POST: fall back to GET
                response = await _get_token(client, realm, service, scope, credentials)
        else:
            response = await _get_token(client, realm, service, scope, credentials)
    except httpx.HTTPError as err:
        raise Unavailable(f"token server {realm} cannot be reached: {err}") from None
    if response.status_code in (401, 403):
        raise Unauthenticated(
            f"token server {realm} refused the credentials for {scope} "
            f"(HTTP {response.status_code})"
        )
    if response.status_code != 200:
        raise Unavailable(f"token server {realm} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise Unavailable(f"token server {realm} sent a response that is not JSON") from None
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise Unavailable(f"token server {realm} sent no token")
    lifetime = body.get("expires_in")
    return token, float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else (
        DEFAULT_TOKEN_LIFETIME
    )


async def _get_token(
    client: httpx.AsyncClient,
    realm: str,
    service: str,
    scope: str,
    credentials: Credentials,
) -> httpx.Response:
    params = {"scope": scope} if scope else {}
    if service:
        params["service"] = service
    auth = (
        httpx.BasicAuth(credentials.username, credentials.password)
        if credentials.username
        else None
    )
    return await client.get(realm, params=params, auth=auth)


def basic_header(credentials: Credentials) -> Mapping[str, str]:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
