"""The image builder gives predictable, well-formed images: pull and unpack tests rely on it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support import images as im

pytestmark = pytest.mark.usefixtures("busybox_available")

REPO = Path(__file__).resolve().parents[3]


def _members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return {m.name: m for m in tf.getmembers()}


def _files(tar: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isfile() else None
            if f is not None:
                out[m.name] = f.read()
    return out


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = (im.sha256_digest(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert im.chain_ids([]) == []
    assert im.chain_ids([a]) == [a]
    assert im.chain_ids([a, b, c]) == [a, ab, abc]


def test_same_inputs_give_same_digests_across_processes() -> None:
    code = (
        "from tests.support import images as im\n"
        "i = im.build_multiplatform(fmt='docker')\n"
        "b = im.busybox_image(extra_layers=[im.random_layer(4096, 7)])\n"
        "print(i.digest, b.digest, b.id)\n"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            check=True,
            text=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    here = im.busybox_image(extra_layers=[im.random_layer(4096, 7)])
    assert len(runs) == 1
    assert here.digest in runs.pop()


def test_busybox_layer_is_a_runnable_rootfs(tmp_path: Path) -> None:
    layer = im.busybox_layer()
    members = _members(layer.tar)
    assert members["bin/busybox"].mode == 0o755
    assert _files(layer.tar)["bin/busybox"] == im.BUSYBOX.read_bytes()
    for applet in ("sh", "ls", "sleep", "id", "nc", "wget", "hostname", "whoami", "top", "ps"):
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert members["root"].mode == 0o700
    assert (members["home/tester"].uid, members["home/tester"].gid) == (1000, 1000)
    assert {m.mtime for m in members.values()} == {im.FIXED_MTIME}
    assert {(m.uname, m.gname) for m in members.values()} == {("", "")}

    passwd = layer.read("/etc/passwd").decode().splitlines()
    assert [line.split(":")[:3] for line in passwd] == [
        ["root", "x", "0"],
        ["daemon", "x", "1"],
        ["www-data", "x", "33"],
        ["nobody", "x", "65534"],
        ["tester", "x", "1000"],
    ]
    groups = {line.split(":")[0]: line for line in layer.read("etc/group").decode().splitlines()}
    assert groups["staff"] == "staff:x:50:tester"
    assert groups["www-data"] == "www-data:x:33:tester"
    assert groups["tester"] == "tester:x:1000:"

    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tf:
        tf.extractall(tmp_path, filter="tar")
    out = subprocess.run(
        [tmp_path / "bin/sh", "-c", "echo hello; ls /"], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[0] == "hello"


def test_custom_users_and_applets() -> None:
    user = im.User("app", 4242, 4343, home="/srv/app", groups=(("audio", 29),))
    layer = im.busybox_layer(users=[user], applets=["sh"])
    names = set(layer.names())
    assert "bin/sh" in names and "bin/ls" not in names
    assert "app:x:4242:4343:app:/srv/app:/bin/sh" in layer.read("etc/passwd").decode()
    assert "audio:x:29:app" in layer.read("etc/group").decode()
    assert _members(layer.tar)["srv/app"].uid == 4242


def test_layer_builder_orders_entries_and_writes_whiteouts() -> None:
    layer = (
        im.LayerBuilder()
        .file("/a/b/c.txt", b"c", 0o600)
        .hardlink("a/b/link", "a/b/c.txt")
        .symlink("a/sym", "b/c.txt")
        .whiteout("/old/file")
        .opaque("/cache")
        .build()
    )
    assert layer.names() == [
        "a/", "a/b/", "a/b/c.txt", "a/b/link", "a/sym",
        "old/", "old/.wh.file", "cache/", "cache/.wh..wh..opq",
    ]  # fmt: skip
    members = _members(layer.tar)
    assert members["a/b/c.txt"].mode == 0o600
    assert members["a/b/link"].islnk()
    with pytest.raises(ValueError, match="already"):
        im.LayerBuilder().file("x", b"").file("x", b"")
    with pytest.raises(ValueError, match="first"):
        im.LayerBuilder().hardlink("x", "missing")
    with pytest.raises(ValueError, match="bad path"):
        im.LayerBuilder().file("../escape", b"")


def test_file_and_random_layers() -> None:
    layer = im.file_layer({"/z": b"z", "/etc/motd": (b"hi\n", 0o600)})
    assert layer.names() == ["etc/", "etc/motd", "z"]
    assert _members(layer.tar)["etc/motd"].mode == 0o600

    r1, r2 = im.random_layer(100_000, seed=1), im.random_layer(100_000, seed=2)
    data = r1.read("data/random.bin")
    assert len(data) == 100_000
    assert data == im.random_layer(100_000, seed=1).read("data/random.bin")
    assert r1.diff_id != r2.diff_id
    assert len(r1.blob(im.Compression.GZIP)) > 100_000  # incompressible


@pytest.mark.parametrize("compression", list(im.Compression))
def test_layer_compression(compression: im.Compression) -> None:
    if compression is im.Compression.ZSTD and not im.zstd_available():
        pytest.skip("zstandard package not installed")
    layer = im.file_layer({"/f": b"x" * 10_000})
    image = im.build_image([layer], compression=compression)
    (desc,) = image.layer_descriptors
    blob = image.blobs[desc.digest]
    if compression is im.Compression.GZIP:
        assert desc.media_type == im.MEDIA_OCI_LAYER_GZIP
        assert gzip.decompress(blob) == layer.tar
        assert blob[4:8] == b"\0\0\0\0"  # no mtime in the gzip header
    elif compression is im.Compression.ZSTD:
        import zstandard

        assert desc.media_type == im.MEDIA_OCI_LAYER_ZSTD
        assert zstandard.ZstdDecompressor().decompress(blob) == layer.tar
    else:
        assert desc.media_type == im.MEDIA_OCI_LAYER
        assert blob == layer.tar
    assert image.config_json["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}


def test_oci_image_parts_fit_together() -> None:
    config = im.ImageConfig(
        user="1000:1000",
        env=["PATH=/bin", "A=b"],
        entrypoint=["/bin/sh", "-c"],
        cmd=["sleep 1"],
        working_dir="/tmp",
        labels={"k": "v"},
        stop_signal="SIGINT",
        exposed_ports=["80/tcp"],
        volumes=["/data"],
    )
    extra = im.file_layer({"/hello": b"hi"}).compressed(im.Compression.NONE)
    image = im.busybox_image(config=config, extra_layers=[extra], platform="linux/arm64/v8")
    manifest, cfg = image.manifest_json, image.config_json
    assert manifest["mediaType"] == image.media_type == im.MEDIA_OCI_MANIFEST
    assert manifest["config"] == image.config_descriptor.to_json()
    assert image.id == image.config_descriptor.digest == im.sha256_digest(image.config)
    assert image.digest == im.sha256_digest(image.manifest)
    assert [d["mediaType"] for d in manifest["layers"]] == [
        im.MEDIA_OCI_LAYER_GZIP,
        im.MEDIA_OCI_LAYER,
    ]
    assert (cfg["architecture"], cfg["os"], cfg["variant"]) == ("arm64", "linux", "v8")
    assert cfg["created"] == im.FIXED_CREATED
    assert cfg["config"] == {
        "User": "1000:1000",
        "ExposedPorts": {"80/tcp": {}},
        "Env": ["PATH=/bin", "A=b"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["sleep 1"],
        "Volumes": {"/data": {}},
        "WorkingDir": "/tmp",
        "Labels": {"k": "v"},
        "StopSignal": "SIGINT",
    }
    assert cfg["rootfs"]["diff_ids"] == image.diff_ids
    assert len(cfg["history"]) == 2
    assert image.chain_ids == im.chain_ids(image.diff_ids)
    for d in image.layer_descriptors:
        assert im.sha256_digest(image.blobs[d.digest]) == d.digest
        assert len(image.blobs[d.digest]) == d.size
    assert set(image.content) == {*image.blobs, image.digest}
    assert image.content_size == sum(len(v) for v in image.content.values())


def test_docker_schema2_media_types() -> None:
    image = im.busybox_image(fmt="docker")
    manifest = image.manifest_json
    assert manifest["mediaType"] == im.MEDIA_DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == im.MEDIA_DOCKER_CONFIG
    assert manifest["layers"][0]["mediaType"] == im.MEDIA_DOCKER_LAYER_GZIP
    with pytest.raises(ValueError, match="annotations"):
        im.build_image([im.busybox_layer()], fmt="docker", annotations={"a": "b"})


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_foreign_layers_stay_out_of_the_blobs(fmt: im.ImageFormat) -> None:
    foreign = im.file_layer({"/f": b"f"}).with_urls("https://example.invalid/f.tar.gz")
    image = im.build_image([im.busybox_layer(), foreign], fmt=fmt)
    desc = image.layer_descriptors[1]
    assert desc.media_type == (
        im.MEDIA_OCI_LAYER_NONDIST_GZIP if fmt == "oci" else im.MEDIA_DOCKER_FOREIGN_LAYER_GZIP
    )
    assert image.manifest_json["layers"][1]["urls"] == ["https://example.invalid/f.tar.gz"]
    assert desc.digest not in image.blobs
    assert image.foreign_blobs[desc.digest] == foreign.blob()
    assert image.diff_ids[1] == foreign.diff_id


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_multiplatform_index(fmt: im.ImageFormat) -> None:
    index = im.build_multiplatform(fmt=fmt)
    doc = index.index_json
    assert doc["mediaType"] == index.media_type
    assert index.media_type == (im.MEDIA_OCI_INDEX if fmt == "oci" else im.MEDIA_DOCKER_LIST)
    assert [m["platform"] for m in doc["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "arm", "os": "linux", "variant": "v7"},
    ]
    arm = index.image_for("linux/arm/v7")
    assert arm.config_json["architecture"] == "arm"
    assert arm.layers[-1].read("etc/platform") == b"linux/arm/v7\n"
    assert doc["manifests"][2]["digest"] == arm.digest
    assert len({i.id for i in index.images}) == 3
    assert index.images[0].layer_descriptors[0] == arm.layer_descriptors[0]  # shared busybox
    assert index.digest not in index.blobs and arm.digest not in index.blobs
    assert {index.digest, arm.digest} <= set(index.content)
    with pytest.raises(KeyError):
        index.image_for("linux/s390x")
    with pytest.raises(ValueError, match="Docker"):
        im.build_index([im.busybox_image(fmt="oci")], fmt="docker")


def test_oci_archive_layout() -> None:
    index = im.build_multiplatform()
    names = ["docker.io/library/busybox:1.36", "127.0.0.1:5001/team/app"]
    archive = im.oci_archive(index, names)
    assert archive == im.oci_archive(index, names)
    files = _files(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    top = json.loads(files["index.json"])
    assert [m["annotations"] for m in top["manifests"]] == [
        {"io.containerd.image.name": names[0], "org.opencontainers.image.ref.name": "1.36"},
        {"io.containerd.image.name": names[1], "org.opencontainers.image.ref.name": names[1]},
    ]
    assert {m["digest"] for m in top["manifests"]} == {index.digest}
    blobs = {n: d for n, d in files.items() if n.startswith("blobs/")}
    assert {f"blobs/{k.replace(':', '/')}" for k in index.content} == set(blobs)
    for name, data in blobs.items():
        assert name == "blobs/sha256/" + hashlib.sha256(data).hexdigest()


def test_docker_save_archive() -> None:
    image = im.busybox_image(extra_layers=[im.file_layer({"/x": b"x"})])
    files = _files(im.docker_save_archive(image, ["busybox:latest", "example.com/a/b:v1"]))
    (entry,) = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["busybox:latest", "example.com/a/b:v1"]
    assert json.loads(files[entry["Config"]]) == image.config_json
    tars = [files[p] for p in entry["Layers"]]
    assert [im.sha256_digest(t) for t in tars] == image.diff_ids
    repositories = json.loads(files["repositories"])
    assert set(repositories) == {"busybox", "example.com/a/b"}
