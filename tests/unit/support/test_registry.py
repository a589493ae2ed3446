"""Each registry variant serves what was pushed and enforces what it claims (TLS, mTLS, basic
and token auth), so pull tests that use them test criproxy, not the fixtures."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
from typing import Any

import httpx
import pytest

from tests.support import images as im
from tests.support.registry import MANIFEST_ACCEPT, Registry, TokenServer, parse_scope

pytestmark = pytest.mark.usefixtures("busybox_available")


def _challenge(response: httpx.Response) -> tuple[str, dict[str, str]]:
    header = response.headers["WWW-Authenticate"]
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _roundtrip(reg: Registry, repo: str, client: httpx.Client) -> None:
    """Push an image and read it back through `client` exactly as a puller would."""
    image = im.busybox_image(extra_layers=[im.random_layer(2048, repo)])
    reg.push(repo, image, "v1")
    r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert r.status_code == 200, r.text
    assert r.content == image.manifest
    assert r.headers["Docker-Content-Digest"] == image.digest
    assert r.headers["Content-Type"] == im.MEDIA_OCI_MANIFEST
    for digest, data in image.blobs.items():
        blob = client.get(f"/v2/{repo}/blobs/{digest}")
        assert blob.status_code == 200
        assert blob.content == data
    assert reg.tags(repo) == ["v1"]


def test_plain_http_roundtrip(registry_http: Registry, repo_name: str) -> None:
    assert registry_http.url == f"http://{registry_http.host}"
    assert registry_http.host.startswith("127.0.0.1:")
    assert registry_http.ca_path is None
    with httpx.Client(base_url=registry_http.url) as c:
        _roundtrip(registry_http, repo_name, c)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_push_index_with_children_and_by_digest(
    registry_http: Registry, repo_name: str, fmt: im.ImageFormat
) -> None:
    index = im.build_multiplatform(fmt=fmt)
    desc = registry_http.push(repo_name, index, "multi")
    assert desc == index.descriptor
    r = registry_http.get_manifest(repo_name, "multi")
    assert (r.content, r.headers["Content-Type"]) == (index.index, index.media_type)
    for child in index.images:
        r = registry_http.get_manifest(repo_name, child.digest)
        assert r.content == child.manifest

    untagged = im.busybox_image(extra_layers=[im.file_layer({"/u": repo_name.encode()})])
    registry_http.push(repo_name + "-digest", untagged)
    assert registry_http.get_manifest(repo_name + "-digest", untagged.digest).status_code == 200
    assert registry_http.tags(repo_name + "-digest") == []


def test_docker_manifest_needs_an_accept_header(registry_http: Registry, repo_name: str) -> None:
    """distribution 2.8 rewrites schema 2 to signed schema 1 for clients that do not accept it,
    and hides OCI manifests from them: a puller must send Accept."""
    docker, oci = im.busybox_image(fmt="docker"), im.busybox_image(fmt="oci")
    registry_http.push(repo_name, docker, "docker")
    registry_http.push(repo_name, oci, "oci")
    with httpx.Client(base_url=registry_http.url) as c:
        r = c.get(f"/v2/{repo_name}/manifests/docker")
        assert r.headers["Content-Type"].endswith("manifest.v1+prettyjws")
        assert r.headers["Docker-Content-Digest"] != docker.digest
        assert c.get(f"/v2/{repo_name}/manifests/oci").status_code == 404


def test_tls_needs_the_session_ca(registry_tls: Registry, repo_name: str) -> None:
    assert registry_tls.url.startswith("https://127.0.0.1:")
    assert registry_tls.ca_path is not None and registry_tls.ca_path.is_file()
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA at all, not even the system's
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{registry_tls.url}/v2/", verify=untrusting)
    trusting = ssl.create_default_context(cafile=str(registry_tls.ca_path))
    by_name = httpx.get(f"https://localhost:{registry_tls.port}/v2/", verify=trusting)
    assert by_name.status_code == 200  # the cert names localhost too
    with httpx.Client(base_url=registry_tls.url, verify=trusting) as c:
        _roundtrip(registry_tls, repo_name, c)


def test_mtls_needs_a_client_cert(registry_mtls: Registry, repo_name: str) -> None:
    assert registry_mtls.client_cert is not None and registry_mtls.ca_path is not None
    no_cert = ssl.create_default_context(cafile=str(registry_mtls.ca_path))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{registry_mtls.url}/v2/", verify=no_cert)
    with_cert = ssl.create_default_context(cafile=str(registry_mtls.ca_path))
    with_cert.load_cert_chain(registry_mtls.client_cert.cert, registry_mtls.client_cert.key)
    with httpx.Client(base_url=registry_mtls.url, verify=with_cert) as c:
        _roundtrip(registry_mtls, repo_name, c)


def test_basic_auth(registry_basic_auth: Registry, repo_name: str) -> None:
    reg = registry_basic_auth
    assert reg.username and reg.password
    verify = ssl.create_default_context(cafile=str(reg.ca_path))
    anonymous = httpx.get(f"{reg.url}/v2/", verify=verify)
    assert anonymous.status_code == 401
    assert _challenge(anonymous)[0] == "Basic"
    wrong = httpx.get(f"{reg.url}/v2/", verify=verify, auth=(reg.username, "wrong"))
    assert wrong.status_code == 401
    with httpx.Client(base_url=reg.url, verify=verify, auth=(reg.username, reg.password)) as c:
        _roundtrip(reg, repo_name, c)


def test_token_auth_flow(
    registry_token_auth: Registry, token_server: TokenServer, repo_name: str
) -> None:
    reg = registry_token_auth
    image = im.busybox_image()
    reg.push(repo_name, image, "v1")
    token_server.clear()  # only this flow's requests count below
    verify = reg.ssl_context()
    with httpx.Client(base_url=reg.url, verify=verify) as c:
        path = f"/v2/{repo_name}/manifests/v1"
        r = c.get(path, headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 401
        scheme, params = _challenge(r)
        assert scheme == "Bearer"
        assert params == {
            "realm": token_server.realm,
            "service": token_server.service,
            "scope": f"repository:{repo_name}:pull",
        }
        assert params["realm"].startswith("https://127.0.0.1:")

        query = {"service": params["service"], "scope": params["scope"]}
        denied = c.get(params["realm"], params=query)
        assert denied.status_code == 401  # anonymous pulls are off by default
        wrong = c.get(params["realm"], params=query, auth=(reg.username or "", "wrong"))
        assert wrong.status_code == 401
        t = c.get(params["realm"], params=query, auth=(reg.username or "", reg.password or ""))
        assert t.status_code == 200
        body = t.json()
        assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
        assert body["token"] == body["access_token"]
        assert body["expires_in"] == token_server.expires_in
        header = _jwt_part(body["token"], 0)
        assert header["alg"] == "RS256" and len(header["x5c"]) == 1

        bearer = {"Authorization": f"Bearer {body['token']}", "Accept": MANIFEST_ACCEPT}
        for _ in range(2):  # the same token serves any number of requests
            r = c.get(path, headers=bearer)
            assert r.status_code == 200 and r.content == image.manifest
        blob = c.get(f"/v2/{repo_name}/blobs/{image.id}", headers=bearer)
        assert blob.content == image.config
        push = c.post(f"/v2/{repo_name}/blobs/uploads/", headers=bearer)
        assert push.status_code == 401  # only pull was asked for
        kind, name, actions = _challenge(push)[1]["scope"].split(":")
        # the registry names the actions in no fixed order
        assert (kind, name, set(actions.split(","))) == ("repository", repo_name, {"pull", "push"})

    assert [(r.method, r.status, r.authorization, r.username) for r in token_server.requests] == [
        ("GET", 401, False, None),
        ("GET", 401, True, None),
        ("GET", 200, True, reg.username),
    ]
    assert token_server.requests[-1].scopes == (f"repository:{repo_name}:pull",)
    assert token_server.requests[-1].service == token_server.service
    assert token_server.count(f"repository:{repo_name}:pull") == 1


def test_token_oauth_grants_and_anonymous_pull(
    registry_token_auth: Registry, token_server: TokenServer, repo_name: str
) -> None:
    reg = registry_token_auth
    reg.push(repo_name, im.busybox_image(), "v1")
    scope = f"repository:{repo_name}:pull"
    form = {"service": token_server.service, "scope": scope, "client_id": "criproxy-tests"}
    with httpx.Client(verify=reg.ssl_context()) as c:
        password = {"grant_type": "password", "username": reg.username, "password": reg.password}
        r = c.post(token_server.realm, data={**form, **password, "access_type": "offline"})
        assert r.status_code == 200
        refresh = r.json()["refresh_token"]
        r = c.post(token_server.realm, data={**form, "grant_type": "refresh_token",
                                             "refresh_token": refresh})  # fmt: skip
        assert r.status_code == 200 and _jwt_part(r.json()["access_token"], 1)["sub"] == "criproxy"
        bad = c.post(token_server.realm, data={**form, "grant_type": "refresh_token",
                                               "refresh_token": "nope"})  # fmt: skip
        assert bad.status_code == 401

        token_server.anonymous_pull = True
        anon = c.get(token_server.realm, params={"service": token_server.service,
                                                 "scope": f"{scope},push"})  # fmt: skip
        assert anon.status_code == 200
        assert _jwt_part(anon.json()["token"], 1)["access"] == [
            {"type": "repository", "name": repo_name, "actions": ["pull"]}
        ]
        ok = c.get(
            f"{reg.url}/v2/{repo_name}/manifests/v1",
            headers={"Authorization": f"Bearer {anon.json()['token']}", "Accept": MANIFEST_ACCEPT},
        )
        assert ok.status_code == 200
    assert [r.grant_type for r in token_server.requests] == [
        "password", "refresh_token", "refresh_token", None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mint_args", "scope_repo_suffix"),
    [
        ({"expires_in": -120}, ""),  # expired beyond the registry's 60 s leeway
        ({"audience": "another-service"}, ""),
        ({"issuer": "another-issuer"}, ""),
        ({}, "-other"),  # valid, but for another repository
    ],
)
def test_registry_rejects_bad_tokens(
    registry_token_auth: Registry,
    token_server: TokenServer,
    repo_name: str,
    mint_args: dict[str, Any],
    scope_repo_suffix: str,
) -> None:
    reg = registry_token_auth
    reg.push(repo_name, im.busybox_image(), "v1")
    token = token_server.mint(
        [("repository", repo_name + scope_repo_suffix, ["pull"])], **mint_args
    )
    r = httpx.get(
        f"{reg.url}/v2/{repo_name}/manifests/v1",
        headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT},
        verify=reg.ssl_context(),
    )
    assert r.status_code == 401
    want = "insufficient_scope" if scope_repo_suffix else "invalid_token"
    assert want in r.headers["WWW-Authenticate"]


def test_corrupt_blob(registry_http: Registry, repo_name: str) -> None:
    image = im.busybox_image(extra_layers=[im.random_layer(4096, repo_name)])
    registry_http.push(repo_name, image, "v1")
    layer = image.layer_descriptors[-1]
    registry_http.corrupt_blob(layer.digest)
    served = registry_http.get_blob(repo_name, layer.digest)
    assert len(served) == layer.size
    assert served != image.blobs[layer.digest]
    assert "sha256:" + hashlib.sha256(served).hexdigest() != layer.digest
    with pytest.raises(ValueError, match="same length"):
        registry_http.corrupt_blob(layer.digest, b"short")


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_foreign_layers_are_accepted_without_their_blob(
    registry_http: Registry, repo_name: str, fmt: im.ImageFormat
) -> None:
    foreign = im.file_layer({"/f": repo_name.encode()}).with_urls("https://example.invalid/f")
    image = im.build_image([im.busybox_layer(), foreign], fmt=fmt)
    registry_http.push(repo_name, image, "v1")
    assert registry_http.get_manifest(repo_name, "v1").content == image.manifest
    with registry_http.client() as c:
        digest = image.layer_descriptors[1].digest
        assert c.head(f"/v2/{repo_name}/blobs/{digest}").status_code == 404


def test_zstd_and_uncompressed_layers(registry_http: Registry, repo_name: str) -> None:
    if not im.zstd_available():
        pytest.skip("zstandard package not installed")
    layers = [
        im.busybox_layer().compressed(im.Compression.ZSTD),
        im.file_layer({"/plain": b"p"}).compressed(im.Compression.NONE),
    ]
    image = im.build_image(layers)
    registry_http.push(repo_name, image, "v1")
    for d in image.layer_descriptors:
        assert registry_http.get_blob(repo_name, d.digest) == image.blobs[d.digest]


def test_delete_manifest(registry_http: Registry, repo_name: str) -> None:
    image = im.busybox_image(extra_layers=[im.file_layer({"/d": repo_name.encode()})])
    registry_http.push(repo_name, image, "v1")
    registry_http.delete_manifest(repo_name, image.digest)
    assert registry_http.get_manifest(repo_name, "v1").status_code == 404
    assert registry_http.tags(repo_name) == []


def test_parse_scope() -> None:
    assert parse_scope("repository:a/b:pull,push") == ("repository", "a/b", ["pull", "push"])
    assert parse_scope("registry:catalog:*") == ("registry", "catalog", ["*"])
    with pytest.raises(ValueError, match="bad scope"):
        parse_scope("nonsense")


def _jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return result
