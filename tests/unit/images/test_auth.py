from __future__ import annotations

import base64

import pytest

from criproxy.errors import InvalidArgument
from criproxy.images.auth import Credentials, parse_challenges


def test_bearer_and_basic_challenges() -> None:
    (bearer,) = parse_challenges(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:library/busybox:pull"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:library/busybox:pull",
    }
    (basic,) = parse_challenges('Basic realm="Registry Realm"')
    assert basic.scheme == "basic"
    both = parse_challenges('Bearer realm="https://a/t", service=s, Basic realm="x"')
    assert [c.scheme for c in both] == ["bearer", "basic"]
    assert both[0].params["service"] == "s"
    assert parse_challenges("") == []


def test_auth_field_is_base64_user_and_password() -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    creds = Credentials.from_auth_config(auth=encoded)
    assert (creds.username, creds.password) == ("alice", "pa:ss")
    explicit = Credentials.from_auth_config(username="bob", password="x", auth=encoded)
    assert explicit.username == "bob"


@pytest.mark.parametrize("bad", ["!!!", base64.b64encode(b"no-colon").decode()])
def test_bad_auth_field(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=r"auth\.auth"):
        Credentials.from_auth_config(auth=bad)


def test_identity_keeps_secrets_out_and_tells_credentials_apart() -> None:
    a = Credentials("u", "secret")
    b = Credentials("u", "other")
    assert a.identity() != b.identity()
    assert "secret" not in a.identity()
    assert Credentials().anonymous
    assert not Credentials(registry_token="t").anonymous


def test_credentials_go_only_to_their_registry_or_a_mirror_asked_for_them() -> None:
    creds = Credentials("u", "p", server_address="https://reg.example.com")
    assert creds.for_host("reg.example.com", "reg.example.com") == creds
    assert creds.for_host("reg.example.com", "mirror.example.com") == creds
    assert creds.for_host("other.example.com", "other.example.com").anonymous
    hub = Credentials("u", "p", server_address="https://index.docker.io/v1/")
    assert hub.for_host("docker.io", "registry-1.docker.io") == hub
    assert Credentials("u", "p").for_host("x", "y").username == "u"
