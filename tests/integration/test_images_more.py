"""Pull paths that need a criproxy of their own: timeouts, resumes, config credentials,
the sandbox image, foreign layers, and `criproxy images import`."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import REPO, ContainerdProcess, Criproxy, wait_until
from tests.integration.images_env import ImageEnv, private_env
from tests.support.faultproxy import FaultProxy
from tests.support.images import (
    Compression,
    busybox_image,
    docker_save_archive,
    file_layer,
    oci_archive,
    random_bytes,
    random_layer,
)
from tests.support.registry import Registry


@pytest.fixture
def own_env(short_tmp: Path, image_env: ImageEnv) -> Iterator[ImageEnv]:
    """A second criproxy on the image tests' containerd; tests set its config first."""
    env = private_env(short_tmp, image_env.containerd)
    yield env
    env.proxy.stop()


def test_a_stalled_download_is_cancelled_after_the_progress_timeout(
    own_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[random_layer(2 * 1024 * 1024, seed="stall")])
    registry_http.push(repo_name, image, "v1")
    proxy = FaultProxy(registry_http.port, mode="stall", after_bytes=128 * 1024).start()
    try:
        own_env.proxy.config["image_pull_progress_timeout"] = "2s"
        own_env.proxy.start()
        own_env.write_hosts(registry_http.host, f'server = "http://{proxy.host}"\n')
        err = own_env.pull_error(registry_http.reference(repo_name, "v1"), timeout=60)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no progress for 2s" in err.details()
        assert "image_pull_progress_timeout" in err.details()
        assert own_env.ctr("leases", "ls", "-q").stdout.strip() == ""
    finally:
        proxy.stop()


def test_a_broken_download_resumes_where_it_stopped(
    own_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    size = 3 * 1024 * 1024
    image = busybox_image(extra_layers=[random_layer(size, seed="resume")])
    registry_http.push(repo_name, image, "v1")
    layer = image.layer_descriptors[-1].digest
    proxy = FaultProxy(registry_http.port, mode="cut_once", after_bytes=1536 * 1024).start()
    try:
        own_env.proxy.start()
        own_env.write_hosts(registry_http.host, f'server = "http://{proxy.host}"\n')
        assert own_env.pull(registry_http.reference(repo_name, "v1")) == image.id
        assert proxy.cuts == 1
        ranged = [r for r in proxy.requests if layer in r.path and r.range]
        assert ranged, f"the retry must ask for the rest only: {proxy.requests}"
        start = int(ranged[0].range.removeprefix("bytes=").split("-")[0])
        assert 0 < start < size
        assert own_env.layer_downloads(layer) == 1
    finally:
        proxy.stop()


def test_a_broken_download_resumes_from_a_registry_that_ignores_ranges(
    own_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    """The registry answers the resume's range request with the whole blob (200): the
    bytes already unpacked are skipped, not unpacked twice."""
    size = 3 * 1024 * 1024
    image = busybox_image(extra_layers=[random_layer(size, seed="whole-again")])
    registry_http.push(repo_name, image, "v1")
    layer = image.layer_descriptors[-1].digest
    proxy = FaultProxy(
        registry_http.port, mode="cut_once", after_bytes=1536 * 1024, ignore_range=True
    ).start()
    try:
        own_env.proxy.start()
        own_env.write_hosts(registry_http.host, f'server = "http://{proxy.host}"\n')
        assert own_env.pull(registry_http.reference(repo_name, "v1")) == image.id
        assert proxy.cuts == 1
        asked = [r for r in proxy.requests if layer in r.path and r.method == "GET"]
        assert len(asked) == 2 and asked[1].range  # it asked for the rest, got it all
        assert own_env.layer_downloads(layer) == 1
        out = own_env.ctr(
            "run",
            "--rm",
            registry_http.reference(repo_name, "v1"),
            "whole",
            "sha256sum",
            "/data/random.bin",
        )
        assert hashlib.sha256(random_bytes(size, "whole-again")).hexdigest() in out.stdout
    finally:
        proxy.stop()


def test_a_pull_killed_mid_layer_leaves_nothing_and_pulls_again_after_a_restart(
    own_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    """criproxy is killed (-9) while a layer unpacks: the restarted criproxy sweeps the
    dead pull's lease (and with it the half-unpacked snapshot), and the pull works."""
    image = busybox_image(extra_layers=[random_layer(2 * 1024 * 1024, seed="killed")])
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    proxy = FaultProxy(registry_http.port, mode="stall", after_bytes=512 * 1024).start()
    try:
        own_env.proxy.start()
        own_env.write_hosts(registry_http.host, f'server = "http://{proxy.host}"\n')
        pulling = threading.Thread(
            target=_quietly,
            args=(own_env.pull, ref),
            daemon=True,
        )
        pulling.start()

        def unpacking() -> bool:
            return "extract-" in own_env.ctr("snapshots", "ls").stdout

        wait_until(unpacking, 30, what="a layer being unpacked")
        own_env.proxy.kill()
        own_env.write_hosts(registry_http.host, f'server = "http://{registry_http.host}"\n')
        own_env.proxy.start()

        def swept() -> bool:
            leases = own_env.ctr("leases", "ls", "-q").stdout.split()
            return not unpacking() and not [x for x in leases if "pull" in x]

        wait_until(swept, 30, what="the dead pull's lease and snapshots gone")
        assert own_env.pull(ref) == image.id
        assert not unpacking()
    finally:
        proxy.stop()


def _quietly(call: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(grpc.RpcError):
        call(*args)


def test_credentials_from_config_and_the_pinned_sandbox_image(
    own_env: ImageEnv, registry_basic_auth: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/pause": b"1"})])
    registry_basic_auth.push(repo_name, image, "3.10")
    ref = registry_basic_auth.reference(repo_name, "3.10")
    own_env.trust(registry_basic_auth)
    own_env.proxy.config["sandbox_image"] = ref
    own_env.proxy.config["registry"]["configs"] = {  # type: ignore[index]
        registry_basic_auth.host: {
            "auth": {
                "username": registry_basic_auth.username,
                "password": registry_basic_auth.password,
            }
        }
    }
    own_env.proxy.start()
    assert own_env.pull(ref) == image.id  # no credentials in the request
    assert own_env.status(ref).image.pinned is True
    verbose = own_env.proxy.runtime.Status(api_pb2.StatusRequest(verbose=True)).info["config"]
    assert registry_basic_auth.password not in verbose


def test_foreign_layer_is_fetched_from_its_url(
    image_env: ImageEnv,
    registry_http: Registry,
    registry_factory,
    repo_name: str,  # type: ignore[no-untyped-def]
) -> None:
    elsewhere = registry_factory()
    base = file_layer({"/foreign": b"from elsewhere\n"})
    blob = base.blob(Compression.GZIP)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    elsewhere.push_blob(repo_name, digest, blob)
    url = f"{elsewhere.url}/v2/{repo_name}/blobs/{digest}"
    image = busybox_image(extra_layers=[base.with_urls(url)])
    registry_http.push(repo_name, image, "v1")  # the registry itself lacks that blob
    ref = registry_http.reference(repo_name, "v1")
    assert image_env.pull(ref) == image.id
    out = image_env.ctr("run", "--rm", ref, "foreign-run", "cat", "/foreign")
    assert out.stdout == "from elsewhere\n", out.stderr


def _import(
    proxy: Criproxy, containerd: ContainerdProcess, archive: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "criproxy",
            "images",
            "import",
            str(archive),
            "--config",
            str(proxy.write_config()),
            "--containerd",
            str(containerd.socket),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_images_import_loads_an_archive_with_its_names(
    image_env: ImageEnv, short_tmp: Path, kind: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/imported": kind.encode()})])
    name = f"registry.example.com/offline/{kind}:v1"
    archive = short_tmp / f"{kind}.tar"
    if kind == "oci":
        archive.write_bytes(oci_archive(image, [name]))
    else:
        archive.write_bytes(docker_save_archive(image, [name]))
    result = _import(image_env.proxy, image_env.containerd, archive)
    assert result.returncode == 0, result.stderr
    assert image.id in result.stdout and name in result.stdout
    status = image_env.status(name)  # the running criproxy saw containerd's events
    for _ in range(100):
        if status.image.id:
            break
        import time

        time.sleep(0.05)
        status = image_env.status(name)
    assert status.image.id == image.id
    assert list(status.image.repo_tags) == [name]
    out = image_env.ctr("run", "--rm", name, f"import-{kind}", "cat", "/imported")
    assert out.stdout == kind, out.stderr


def test_images_import_rejects_a_corrupt_archive(image_env: ImageEnv, short_tmp: Path) -> None:
    image = busybox_image(extra_layers=[file_layer({"/corrupt": b"x"})])
    data = bytearray(oci_archive(image, ["registry.example.com/offline/bad:v1"]))
    # flip a byte inside the last layer's data (gzip payload, far from the tar headers)
    blob = image.blobs[image.layer_descriptors[-1].digest]
    offset = bytes(data).find(blob) + len(blob) // 2
    data[offset] ^= 0xFF
    archive = short_tmp / "bad.tar"
    archive.write_bytes(bytes(data))
    result = _import(image_env.proxy, image_env.containerd, archive)
    assert result.returncode == 1
    assert "does not match its digest" in result.stderr
    assert image.id not in image_env.ctr("images", "ls", "-q").stdout


def test_kubelet_style_pull_of_a_private_image_through_a_mirror(
    image_env: ImageEnv, registry_basic_auth: Registry, repo_name: str
) -> None:
    """The kubelet sends the pull secret of the image's registry; the mirror that serves the
    image asks for it. The registry named in the image is down."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        origin = f"127.0.0.1:{s.getsockname()[1]}"  # nobody listens there
    image = busybox_image(extra_layers=[file_layer({"/private": b"secret data\n"})])
    registry_basic_auth.push(repo_name, image, "v1")
    image_env.write_hosts(
        origin,
        f'server = "http://{origin}"\n'
        f'[host."{registry_basic_auth.url}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{registry_basic_auth.ca_path}"\n',
    )
    ref = f"{origin}/{repo_name}:v1"
    secret = api_pb2.AuthConfig(
        username=registry_basic_auth.username,
        password=registry_basic_auth.password,
        server_address=origin,
    )
    assert image_env.pull(ref, auth=secret) == image.id
    out = image_env.ctr("run", "--rm", ref, "private-run", "cat", "/private")
    assert out.stdout == "secret data\n", out.stderr
    # a secret for another registry is not handed to this one
    image_env.remove(ref)
    elsewhere = api_pb2.AuthConfig(
        username=registry_basic_auth.username,
        password=registry_basic_auth.password,
        server_address="registry.example.com",
    )
    err = image_env.pull_error(ref, auth=elsewhere)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_sighup_reloads_credentials_handlers_and_log_level_while_a_pull_goes_on(
    own_env: ImageEnv,
    registry_http: Registry,
    registry_basic_auth: Registry,
    repo_name: str,
) -> None:
    import signal

    held = busybox_image(extra_layers=[random_layer(1024 * 1024, seed="reload")])
    registry_http.push(repo_name, held, "v1")
    private = busybox_image(extra_layers=[file_layer({"/private": b"1"})])
    registry_basic_auth.push(repo_name, private, "v1")
    private_ref = registry_basic_auth.reference(repo_name, "v1")
    proxy = FaultProxy(registry_http.port, mode="hold", after_bytes=64 * 1024).start()
    cpx = own_env.proxy
    try:
        cpx.start()
        own_env.write_hosts(registry_http.host, f'server = "http://{proxy.host}"\n')
        own_env.trust(registry_basic_auth)
        assert own_env.pull_error(private_ref).code() == grpc.StatusCode.UNAUTHENTICATED
        pulled: list[str] = []
        pulling = threading.Thread(
            target=lambda: pulled.append(own_env.pull(registry_http.reference(repo_name, "v1")))
        )
        pulling.start()
        assert proxy.held.wait(30), "the pull reached the registry"

        auth = {"username": registry_basic_auth.username, "password": registry_basic_auth.password}
        cpx.config["log_level"] = "debug"
        cpx.config["registry"] = {
            **cpx.config["registry"],  # type: ignore[dict-item]
            "configs": {registry_basic_auth.host: {"auth": auth}},
        }
        cpx.config["runtimes"] = {"reloaded": {"options": {"BinaryName": "runc"}}}
        cpx.config["max_concurrent_downloads"] = 5  # needs a restart: said, not applied
        cpx.write_config()
        cpx.signal(signal.SIGHUP)
        wait_until(lambda: _events(cpx, "configuration reloaded"), 10, what="the reload")
        (reloaded,) = _events(cpx, "configuration reloaded")
        assert set(reloaded["changed"]) == {"registry", "runtimes", "log_level"}  # type: ignore[arg-type]
        assert reloaded["needs_restart"] == ["max_concurrent_downloads"]

        proxy.release()
        pulling.join(120)
        assert pulled == [held.id], "the pull in flight finished"
        assert own_env.pull(private_ref) == private.id, "the config's credentials now"
        status = cpx.runtime.Status(api_pb2.StatusRequest(), timeout=10)
        assert "reloaded" in {h.name for h in status.runtime_handlers}
        cpx.runtime.Version(api_pb2.VersionRequest())
        debug = [r for r in cpx.log_records() if r.get("level") == "debug"]
        assert any(r.get("method") == "Version" for r in debug), "polling calls at debug now"

        (cpx.base / "criproxy.toml").write_text("log_level = 'loud'\n")
        cpx.signal(signal.SIGHUP)
        wait_until(lambda: _events(cpx, "configuration not reloaded"), 10, what="a refusal")
        assert "log_level" in str(_events(cpx, "configuration not reloaded")[0]["error"])
        assert cpx.runtime.Version(api_pb2.VersionRequest()).runtime_name == "criproxy"
    finally:
        proxy.stop()


def _events(proxy: Criproxy, name: str) -> list[dict[str, object]]:
    return [r for r in proxy.log_records() if r.get("event") == name]
