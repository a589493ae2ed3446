"""ImageService against a real docker-registry and a real containerd."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.images_env import ImageEnv
from tests.support.images import (
    Compression,
    ImageConfig,
    build_multiplatform,
    busybox_image,
    file_layer,
    random_layer,
)
from tests.support.registry import Registry


def test_pull_by_tag_and_status(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(config=ImageConfig(user="www-data:33", env=("A=1",)))
    top = registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    assert image_env.pull(ref) == image.id
    status = image_env.status(ref, verbose=True)
    assert status.image.id == image.id
    assert list(status.image.repo_tags) == [ref]
    assert list(status.image.repo_digests) == [f"{registry_http.host}/{repo_name}@{top.digest}"]
    assert status.image.username == "www-data"
    assert not status.image.HasField("uid")
    assert status.image.size == len(image.manifest) + sum(
        d.size for d in (image.config_descriptor, *image.layer_descriptors)
    )
    info = json.loads(status.info["info"])
    assert info["chainID"] == image.chain_ids[-1]
    assert info["imageSpec"]["config"]["Env"] == ["A=1"]
    # the same image by id, short id and repo digest
    for key in (image.id, image.id.removeprefix("sha256:")[:12], status.image.repo_digests[0]):
        assert image_env.status(key).image.id == image.id


def test_numeric_user_is_a_uid(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(
        config=ImageConfig(user="1003:1004"), extra_layers=[file_layer({"/u": b"1"})]
    )
    registry_http.push(repo_name, image, "v1")
    image_env.pull(registry_http.reference(repo_name, "v1"))
    status = image_env.status(registry_http.reference(repo_name, "v1"))
    assert status.image.uid.value == 1003
    assert status.image.username == ""


def test_pull_by_digest_and_by_tag_plus_digest(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/by-digest": b"x"})])
    top = registry_http.push(repo_name, image)  # by digest only: no tag exists
    by_digest = registry_http.reference(repo_name, digest=top.digest)
    assert image_env.pull(by_digest) == image.id
    status = image_env.status(by_digest).image
    assert list(status.repo_tags) == []
    assert list(status.repo_digests) == [by_digest]
    # name:tag@digest resolves the digest; the tag (which does not exist) is ignored
    both = registry_http.reference(repo_name, "nosuchtag", top.digest)
    assert image_env.pull(both) == image.id
    assert list(image_env.status(both).image.repo_tags) == []


def test_pull_selects_the_host_platform_from_an_index(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    for fmt in ("oci", "docker"):
        index = build_multiplatform(fmt=fmt)
        registry_http.push(repo_name, index, fmt)
        ref = registry_http.reference(repo_name, fmt)
        amd64 = index.image_for("linux/amd64")
        assert image_env.pull(ref) == amd64.id
        status = image_env.status(ref).image
        # (both formats hold the same amd64 config, so the image collects both digests)
        assert f"{registry_http.host}/{repo_name}@{index.digest}" in status.repo_digests
        # the image runs, and its rootfs is the amd64 one
        out = image_env.ctr("run", "--rm", ref, f"plat-{fmt}", "cat", "/etc/platform")
        assert out.returncode == 0, out.stderr
        assert "linux/amd64" in out.stdout


def test_pulled_image_runs_under_ctr(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/hello": b"hello from criproxy\n"})])
    registry_http.push(repo_name, image, "run")
    ref = registry_http.reference(repo_name, "run")
    image_env.pull(ref)
    out = image_env.ctr("run", "--rm", ref, "ctr-run-test", "cat", "/hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from criproxy\n"
    labels = image_env.ctr("content", "ls").stdout
    assert f"containerd.io/gc.ref.content.config={image.id}" in labels


def test_second_pull_of_a_present_image_downloads_nothing(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    layer = random_layer(256 * 1024, seed="present")
    image = busybox_image(extra_layers=[layer])
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    image_env.pull(ref)
    digest = image.layer_descriptors[-1].digest
    assert image_env.layer_downloads(digest) == 1
    assert image_env.pull(ref) == image.id
    assert image_env.layer_downloads(digest) == 1


def test_concurrent_pulls_of_one_image_share_one_download(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    layers = [random_layer(2 * 1024 * 1024, seed=f"concurrent-{i}") for i in range(3)]
    image = busybox_image(extra_layers=layers)
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(image_env.pull(ref))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == [image.id] * 4
    for desc in image.layer_descriptors[1:]:
        assert image_env.layer_downloads(desc.digest) == 1


def test_missing_image_is_not_found(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    err = image_env.pull_error(registry_http.reference(repo_name, "absent"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert repo_name in err.details()


def test_invalid_reference_is_invalid_argument(image_env: ImageEnv) -> None:
    for bad in ("Busybox", "busybox:", "", "a" * 64):
        err = image_env.pull_error(bad)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_unreachable_registry_fails_quickly_and_clearly(image_env: ImageEnv) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    err = image_env.pull_error(f"127.0.0.1:{port}/nothing/here:v1")
    assert time.monotonic() - started < 30
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in err.details()


def test_tls_registry_with_ca_from_hosts_toml(
    image_env: ImageEnv, registry_tls: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/tls": b"1"})])
    registry_tls.push(repo_name, image, "v1")
    ref = registry_tls.reference(repo_name, "v1")
    image_env.write_hosts(registry_tls.host, "")  # no CA: the self-signed cert is refused
    err = image_env.pull_error(ref)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in err.details() or "certificate" in err.details()
    image_env.write_hosts(registry_tls.host, f'server = "{registry_tls.url}"\nskip_verify = true\n')
    assert image_env.pull(ref) == image.id
    image_env.remove(ref)
    image_env.trust(registry_tls)
    assert image_env.pull(ref) == image.id


def test_mtls_registry_with_client_certificate(
    image_env: ImageEnv, registry_mtls: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/mtls": b"1"})])
    registry_mtls.push(repo_name, image, "v1")
    image_env.trust(registry_mtls)
    assert image_env.pull(registry_mtls.reference(repo_name, "v1")) == image.id


def test_basic_auth(image_env: ImageEnv, registry_basic_auth: Registry, repo_name: str) -> None:
    image = busybox_image(extra_layers=[file_layer({"/basic": b"1"})])
    registry_basic_auth.push(repo_name, image, "v1")
    image_env.trust(registry_basic_auth)
    ref = registry_basic_auth.reference(repo_name, "v1")
    err = image_env.pull_error(ref)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "requires credentials" in err.details()
    wrong = api_pb2.AuthConfig(username=registry_basic_auth.username, password="wrong")
    err = image_env.pull_error(ref, auth=wrong)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    good = api_pb2.AuthConfig(
        username=registry_basic_auth.username, password=registry_basic_auth.password
    )
    assert image_env.pull(ref, auth=good) == image.id


def test_token_auth_with_every_kind_of_credentials_and_token_caching(
    image_env: ImageEnv,
    registry_token_auth: Registry,
    token_server,
    repo_name: str,  # type: ignore[no-untyped-def]
) -> None:
    import base64

    image = busybox_image(extra_layers=[file_layer({"/token": b"1"})])
    other = busybox_image(extra_layers=[file_layer({"/token": b"2"})])
    registry_token_auth.push(repo_name, image, "v1")
    registry_token_auth.push(repo_name, other, "v2")
    image_env.trust(registry_token_auth)
    ref = registry_token_auth.reference(repo_name, "v1")
    user, password = registry_token_auth.username, registry_token_auth.password

    err = image_env.pull_error(ref, auth=api_pb2.AuthConfig(username=user, password="wrong"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    token_server.clear()
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert image_env.pull(ref, auth=api_pb2.AuthConfig(auth=encoded)) == image.id
    scope = f"repository:{repo_name}:pull"
    assert token_server.count(scope) == 1
    # a second image of the same repository: the cached token serves it
    ref2 = registry_token_auth.reference(repo_name, "v2")
    assert image_env.pull(ref2, auth=api_pb2.AuthConfig(auth=encoded)) == other.id
    assert token_server.count(scope) == 1
    # a registry token is used as the bearer token as it is
    image_env.remove(ref)
    token = token_server.mint([("repository", repo_name, ["pull"])], subject=user)
    token_server.clear()
    assert image_env.pull(ref, auth=api_pb2.AuthConfig(registry_token=token)) == image.id
    assert token_server.count(scope) == 0


def test_corrupt_blob_is_rejected_and_nothing_is_left(
    image_env: ImageEnv,
    registry_factory,
    repo_name: str,  # type: ignore[no-untyped-def]
) -> None:
    registry = registry_factory()  # its own registry: corrupting it must not affect others
    layer = random_layer(512 * 1024, seed="corrupt")
    image = busybox_image(extra_layers=[layer])
    registry.push(repo_name, image, "v1")
    bad = image.layer_descriptors[-1].digest
    registry.corrupt_blob(bad)
    ref = registry.reference(repo_name, "v1")
    err = image_env.pull_error(ref)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert bad in err.details()
    assert image_env.status(ref).image.id == ""
    assert bad not in image_env.ctr("content", "ls", "-q").stdout
    assert "criproxy-pull" not in image_env.ctr("content", "active").stdout
    assert image_env.ctr("leases", "ls", "-q").stdout.strip() == ""
    assert image.id not in image_env.ctr("images", "ls", "-q").stdout


def test_mirror_is_tried_first_and_origin_is_the_fallback(
    image_env: ImageEnv,
    registry_http: Registry,
    registry_factory,
    repo_name: str,  # type: ignore[no-untyped-def]
) -> None:
    mirror = registry_factory()
    origin_only = busybox_image(extra_layers=[file_layer({"/origin": b"1"})])
    mirrored = busybox_image(extra_layers=[file_layer({"/mirror": b"1"})])
    registry_http.push(repo_name, origin_only, "origin")
    mirror.push(repo_name, mirrored, "mirrored")
    image_env.write_hosts(
        registry_http.host,
        f'server = "{registry_http.url}"\n'
        f'[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]\n',
    )
    # only the mirror has this tag: it must have been used
    assert image_env.pull(registry_http.reference(repo_name, "mirrored")) == mirrored.id
    # the mirror lacks this one: the origin serves it
    assert image_env.pull(registry_http.reference(repo_name, "origin")) == origin_only.id
    # a dead mirror is skipped as well
    image_env.write_hosts(
        registry_http.host,
        f'server = "{registry_http.url}"\n[host."http://127.0.0.1:9"]\n',
    )
    image_env.remove(registry_http.reference(repo_name, "origin"))
    assert image_env.pull(registry_http.reference(repo_name, "origin")) == origin_only.id
    (image_env.certs_d / registry_http.host / "hosts.toml").unlink()


def test_remove_then_pull_again(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[random_layer(128 * 1024, seed="repull")])
    registry_http.push(repo_name, image, "a")
    registry_http.push(repo_name, image, "b")
    ref_a, ref_b = registry_http.reference(repo_name, "a"), registry_http.reference(repo_name, "b")
    image_env.pull(ref_a)
    image_env.pull(ref_b)
    assert sorted(image_env.status(image.id).image.repo_tags) == sorted([ref_a, ref_b])
    image_env.remove(ref_a)  # by one tag: every name goes
    for key in (ref_a, ref_b, image.id):
        assert image_env.status(key).image.id == ""
    assert image.id not in [i.id for i in image_env.list()]
    assert image.id not in image_env.ctr("images", "ls", "-q").stdout
    image_env.remove(ref_a)  # removing a missing image is not an error
    assert image_env.pull(ref_a) == image.id
    assert [i.id for i in image_env.list()].count(image.id) == 1


def test_list_images_with_filter(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/list": b"1"})])
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    image_env.pull(ref)
    everything = image_env.list()
    assert image.id in [i.id for i in everything]
    filtered = image_env.proxy.images.ListImages(
        api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=ref)))
    ).images
    assert [i.id for i in filtered] == [image.id]
    streamed = [
        i.id
        for response in image_env.proxy.images.StreamImages(api_pb2.StreamImagesRequest())
        for i in response.images
    ]
    assert sorted(streamed) == sorted(i.id for i in everything)


def test_image_fs_info_grows_with_a_pull(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    def usage() -> tuple[int, int, str]:
        fs = image_env.proxy.images.ImageFsInfo(api_pb2.ImageFsInfoRequest()).image_filesystems[0]
        return fs.used_bytes.value, fs.inodes_used.value, fs.fs_id.mountpoint

    before_bytes, before_inodes, mountpoint = usage()
    assert mountpoint.endswith("io.containerd.snapshotter.v1.overlayfs")
    size = 3 * 1024 * 1024
    image = busybox_image(
        extra_layers=[
            random_layer(size, seed="fsinfo"),
            file_layer({f"/f{i}": b"" for i in range(50)}),
        ]
    )
    registry_http.push(repo_name, image, "v1")
    image_env.pull(registry_http.reference(repo_name, "v1"))
    after_bytes, after_inodes, _ = usage()
    assert after_bytes >= before_bytes + size
    assert after_inodes >= before_inodes + 50


def test_zstd_and_uncompressed_layers(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    for compression in (Compression.ZSTD, Compression.NONE):
        image = busybox_image(
            extra_layers=[file_layer({"/c": compression.value.encode()})], compression=compression
        )
        registry_http.push(repo_name, image, compression.value or "none")
        ref = registry_http.reference(repo_name, compression.value or "none")
        assert image_env.pull(ref) == image.id
        out = image_env.ctr("run", "--rm", ref, f"comp-{compression.name.lower()}", "cat", "/c")
        assert out.returncode == 0, out.stderr
        assert out.stdout == compression.value


def test_docker_schema2_image(image_env: ImageEnv, registry_http: Registry, repo_name: str) -> None:
    image = busybox_image(extra_layers=[file_layer({"/d": b"1"})], fmt="docker")
    registry_http.push(repo_name, image, "v1")
    assert image_env.pull(registry_http.reference(repo_name, "v1")) == image.id


def test_restart_keeps_every_image_listed_identically(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/restart": b"1"})])
    registry_http.push(repo_name, image, "v1")
    image_env.pull(registry_http.reference(repo_name, "v1"))
    before = sorted(image_env.list(), key=lambda i: i.id)
    assert before
    image_env.proxy.kill()
    image_env.proxy.start()
    after = sorted(image_env.list(), key=lambda i: i.id)
    assert [i.SerializeToString(deterministic=True) for i in after] == [
        i.SerializeToString(deterministic=True) for i in before
    ]


def test_images_changed_by_another_client_show_up(
    image_env: ImageEnv, registry_http: Registry, repo_name: str
) -> None:
    image = busybox_image(extra_layers=[file_layer({"/tagged": b"1"})])
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    image_env.pull(ref)
    alias = f"docker.io/library/alias-{repo_name.replace('/', '-')}:latest"
    out = image_env.ctr("images", "tag", ref, alias)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 10
    while alias not in image_env.status(image.id).image.repo_tags:
        assert time.monotonic() < deadline, "the tag made with ctr never showed up"
        time.sleep(0.05)
    image_env.ctr("images", "rm", alias)
    while alias in image_env.status(image.id).image.repo_tags:
        assert time.monotonic() < deadline, "the tag removed with ctr never went away"
        time.sleep(0.05)


@pytest.mark.parametrize("field", ["image.image"])
def test_empty_image_is_invalid_argument(image_env: ImageEnv, field: str) -> None:
    for call, request in (
        (image_env.proxy.images.ImageStatus, api_pb2.ImageStatusRequest()),
        (image_env.proxy.images.RemoveImage, api_pb2.RemoveImageRequest()),
        (image_env.proxy.images.PullImage, api_pb2.PullImageRequest()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details()


def test_status_of_a_missing_image_is_empty_not_an_error(image_env: ImageEnv) -> None:
    assert not image_env.status("docker.io/library/never-pulled:1").HasField("image")
