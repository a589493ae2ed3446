"""pytest fixtures for pull tests: session-wide registries of each kind, started on first use.

Register them once for the whole suite in the root conftest:

    pytest_plugins = ["tests.support.fixtures"]

Each registry lives for the session, so tests share it: push to a repository of your own
(`repo_name`) and reset the token log through `token_server`. A missing docker-registry,
openssl or bcrypt skips the test with the reason (CRIPROXY_REQUIRE_ALL turns that into a
failure).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.images import BUSYBOX
from tests.support.registry import (
    Pki,
    Registry,
    RegistryFactory,
    TokenServer,
    missing_requirements,
    start_registry,
)


def _skip_unless(reason: str | None) -> None:
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def busybox_available() -> None:
    """Skips when /bin/busybox (busybox-static, which test images are built from) is missing."""
    _skip_unless(None if BUSYBOX.is_file() else "busybox-static not installed (/bin/busybox)")


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's CA: every TLS registry and token server has a cert from it."""
    _skip_unless(missing_requirements(tls=True))
    return Pki(tmp_path_factory.mktemp("registry-pki"))


@pytest.fixture(scope="session")
def registry_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryFactory]:
    """Starts registries of any kind (`start_registry` keywords), all stopped at session end."""
    started: list[Registry] = []

    def start(**kwargs: Any) -> Registry:
        tls, auth = bool(kwargs.get("tls")), kwargs.get("auth", "none")
        _skip_unless(missing_requirements(tls=tls, auth=auth))
        if (tls or auth == "token") and "pki" not in kwargs:
            kwargs["pki"] = request.getfixturevalue("registry_pki")
        reg = start_registry(tmp_path_factory.mktemp("registry"), **kwargs)
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


@pytest.fixture(scope="session")
def registry_http(registry_factory: RegistryFactory) -> Registry:
    """Plain HTTP, no auth."""
    return registry_factory()


@pytest.fixture(scope="session")
def registry_tls(registry_factory: RegistryFactory) -> Registry:
    """HTTPS with a cert for 127.0.0.1 and localhost from the session CA (`.ca_path`)."""
    return registry_factory(tls=True)


@pytest.fixture(scope="session")
def registry_mtls(registry_factory: RegistryFactory) -> Registry:
    """HTTPS that requires a client cert from the session CA (`.client_cert`)."""
    return registry_factory(tls=True, client_certs=True)


@pytest.fixture(scope="session")
def registry_basic_auth(registry_factory: RegistryFactory) -> Registry:
    """HTTPS + htpasswd basic auth (`.username`, `.password`)."""
    return registry_factory(tls=True, auth="basic")


@pytest.fixture(scope="session")
def registry_token_auth(registry_factory: RegistryFactory) -> Registry:
    """HTTPS + bearer tokens from `.token_server` (HTTPS too, same CA), basic creds there."""
    return registry_factory(tls=True, auth="token")


@pytest.fixture
def token_server(registry_token_auth: Registry) -> Iterator[TokenServer]:
    """The token auth registry's token server, with an empty request log; its settings
    (anonymous_pull, expires_in, refresh tokens) are restored after the test."""
    ts = registry_token_auth.token_server
    assert ts is not None
    saved = (ts.anonymous_pull, ts.expires_in, dict(ts.refresh_tokens), dict(ts.users))
    ts.clear()
    yield ts
    ts.anonymous_pull, ts.expires_in = saved[0], saved[1]
    ts.refresh_tokens, ts.users = saved[2], saved[3]
    ts.clear()


_counter = iter(range(1_000_000))


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name of this test's own (`test/<test-name>-<n>`), valid for a registry."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-")
    return f"test/{base or 'repo'}-{next(_counter)}"
