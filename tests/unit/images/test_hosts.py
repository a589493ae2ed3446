from __future__ import annotations

from pathlib import Path

import pytest

from criproxy.errors import InvalidArgument
from criproxy.images.hosts import HostsConfig


def write(root: Path, name: str, text: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return directory


def test_without_config_docker_hub_and_https() -> None:
    hosts = HostsConfig("")
    (hub,) = hosts.hosts("docker.io")
    assert hub.base_url == "https://registry-1.docker.io/v2"
    (gcr,) = hosts.hosts("gcr.io")
    assert gcr.base_url == "https://gcr.io/v2"
    assert not gcr.fallback_http


@pytest.mark.parametrize(
    ("registry", "scheme", "fallback"),
    [
        ("localhost", "https", False),
        ("127.0.0.1:443", "https", False),
        ("127.0.0.1:80", "http", False),
        ("localhost:5000", "https", True),
        ("[::1]:5000", "https", True),
    ],
)
def test_loopback_registries_as_containerd_reaches_them(
    registry: str, scheme: str, fallback: bool
) -> None:
    (host,) = HostsConfig("").hosts(registry)
    assert (host.scheme, host.fallback_http) == (scheme, fallback)


def test_mirrors_in_order_then_the_server(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        "docker.io",
        """
server = "https://registry-1.docker.io"
[host."https://mirror-a.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "a.crt"
[host."http://mirror-b.example.com:5000/some/path"]
  capabilities = ["pull"]
  override_path = true
  skip_verify = true
  client = [["/c.pem", "/c.key"], "/both.pem"]
  [host."http://mirror-b.example.com:5000/some/path".header]
    x-token = "t"
""",
    )
    a, b, server = HostsConfig(str(tmp_path)).hosts("docker.io")
    assert a.base_url == "https://mirror-a.example.com/v2"
    assert a.capabilities == {"pull", "resolve"}
    assert a.ca_files == (str(directory / "a.crt"),)
    assert b.base_url == "http://mirror-b.example.com:5000/some/path"
    assert b.capabilities == {"pull"}
    assert b.skip_verify
    assert b.client_certs == (("/c.pem", "/c.key"), ("/both.pem", "/both.pem"))
    assert b.headers == (("x-token", "t"),)
    assert server.base_url == "https://registry-1.docker.io/v2"
    assert server.capabilities == {"pull", "resolve", "push"}


def test_server_left_out_is_still_tried_last(tmp_path: Path) -> None:
    write(tmp_path, "gcr.io", '[host."https://m.example.com"]\n')
    mirror, origin = HostsConfig(str(tmp_path)).hosts("gcr.io")
    assert mirror.host == "m.example.com"
    assert origin.base_url == "https://gcr.io/v2"


def test_directory_names_with_ports_and_default(tmp_path: Path) -> None:
    write(tmp_path, "localhost_5000_", 'server = "http://localhost:5000"\n')
    write(tmp_path, "_default", 'server = "https://fallback.example.com"\n')
    (host,) = HostsConfig(str(tmp_path)).hosts("localhost:5000")
    assert host.base_url == "http://localhost:5000/v2"
    (other,) = HostsConfig(str(tmp_path)).hosts("quay.io")
    assert other.host == "fallback.example.com"


def test_certs_directory_without_hosts_toml(tmp_path: Path) -> None:
    directory = tmp_path / "reg.example.com"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (directory / name).write_text("x")
    (host,) = HostsConfig(str(tmp_path)).hosts("reg.example.com")
    assert host.ca_files == (str(directory / "ca.crt"),)
    assert host.client_certs == ((str(directory / "client.cert"), str(directory / "client.key")),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[host."ftp://x"]\n', "expected http"),
        ('[host."https://x"]\ncapabilities = ["fly"]\n', "capabilities"),
        ("server = [\n", "cannot be read"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "reg.example.com", text)
    with pytest.raises(InvalidArgument, match=message):
        HostsConfig(str(tmp_path)).hosts("reg.example.com")
