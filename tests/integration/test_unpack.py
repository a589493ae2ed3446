"""Layers unpacked as they download, checked against containerd's own unpacking.

The same image is pulled by criproxy (one pass, straight into the snapshots) and by
containerd's client (`ctr images pull`: content store, then containerd's differ) into
another namespace of the same containerd; a container of each lists the tree with owners,
modes, sizes, times and link targets, and the two listings must be the same. The image
exercises what the OCI layer format asks of an unpacker: whiteouts, opaque directories,
implied parent directories, replacements, hard links, special files.
"""

from __future__ import annotations

import difflib
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.images_env import ImageEnv, private_env
from tests.support.images import Image, Layer, LayerBuilder, busybox_image
from tests.support.registry import Registry

_LIST = (
    "cd /t && find . | sort | while read -r p; do "
    'stat -c "%n %f %u %g %a %s %Y %t %T %N" "$p"; done'
)
_REF_NS = "containerd-ref"
_IMAGE_TIMES = int(time.time()) - 3600
"""Every time in the test images is long before this; later ones are the unpacking's."""


def _raw_layer(*entries: tuple[str, bytes, int, int, bytes], created_by: str) -> Layer:
    """A layer tar written entry by entry, with no parent directories added:
    (name, type, mode, uid, content, or the target of a link)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, mode, uid, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.mtime = kind, mode, uid, 1_600_000_000
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                tf.addfile(info)
    return Layer(buf.getvalue(), created_by=created_by)


def changeset_image() -> Image:
    base = (
        LayerBuilder()
        .dir("/t/keep", mode=0o750, uid=5)
        .file("/t/keep/a", b"a\n")
        .file("/t/keep/b", b"b\n", mode=0o600)
        .file("/t/gone/x", b"x\n")
        .file("/t/opq/1", b"1\n")
        .file("/t/opq/2", b"2\n")
        .dir("/t/owned", mode=0o700, uid=1000, gid=1000)
        .file("/t/suid", b"#!/bin/sh\n", mode=0o4755)
        .symlink("/t/link", "keep/a")
        .hardlink("/t/hl", "/t/keep/b")
        .file("/t/file-then-dir", b"f\n")
        .build("base of the changeset")
    )
    top = _raw_layer(
        ("t/keep/.wh.a", tarfile.REGTYPE, 0o644, 0, b""),
        ("t/.wh.gone", tarfile.REGTYPE, 0o644, 0, b""),
        ("t/opq/.wh..wh..opq", tarfile.REGTYPE, 0o644, 0, b""),
        ("t/opq/3", tarfile.REGTYPE, 0o644, 0, b"3\n"),
        ("t/owned/sub/new", tarfile.REGTYPE, 0o640, 1000, b"new\n"),  # implied parents
        ("t/file-then-dir", tarfile.DIRTYPE, 0o711, 0, b""),
        ("t/file-then-dir/inner", tarfile.REGTYPE, 0o644, 0, b"i\n"),
        ("t/fifo", tarfile.FIFOTYPE, 0o600, 0, b""),
        ("t/keep/c", tarfile.REGTYPE, 0o644, 7, b"c\n"),
        ("t/hl2", tarfile.LNKTYPE, 0o644, 0, b"t/keep/c"),  # to a file of this layer
        created_by="whiteouts and friends",
    )
    again = LayerBuilder().whiteout("/t/keep/c").file("/t/keep/d", b"d\n").build("third")
    return busybox_image(extra_layers=[base, top, again])


def _listing(env: ImageEnv, ref: str, snapshotter: str, namespace: str = "k8s.io") -> str:
    """The tree under /t; directories modified by the unpacking itself (their mtime is
    when it ran, in either runtime) say `now`."""
    name = f"list-{namespace}-{snapshotter}"
    out = env.ctr_in(
        namespace, "run", "--rm", "--snapshotter", snapshotter, ref, name, "sh", "-c", _LIST
    )
    assert out.returncode == 0, out.stderr
    lines = []
    for line in out.stdout.splitlines():
        fields = line.split(" ")
        if int(fields[6]) > _IMAGE_TIMES:
            fields[6] = "now"
        lines.append(" ".join(fields))
    return "\n".join(lines)


@pytest.fixture
def native_env(short_tmp: Path, image_env: ImageEnv) -> Iterator[ImageEnv]:
    env = private_env(short_tmp, image_env.containerd, containerd={"snapshotter": "native"})
    env.proxy.start()
    yield env
    env.proxy.stop()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_the_tree_is_what_containerd_unpacks(
    request: pytest.FixtureRequest,
    registry_http: Registry,
    repo_name: str,
    snapshotter: str,
) -> None:
    env: ImageEnv = request.getfixturevalue(
        "image_env" if snapshotter == "overlayfs" else "native_env"
    )
    image = changeset_image()
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    assert env.pull(ref) == image.id
    ours = _listing(env, ref, snapshotter)
    pulled = env.ctr_in(
        _REF_NS, "images", "pull", "--plain-http", "--snapshotter", snapshotter, ref
    )
    assert pulled.returncode == 0, pulled.stderr
    theirs = _listing(env, ref, snapshotter, _REF_NS)
    diff = difflib.unified_diff(theirs.splitlines(), ours.splitlines(), "containerd", "criproxy")
    assert ours == theirs, "\n".join(diff)
    # and the listing says what the layers mean
    names = [line.split(" ", 1)[0] for line in ours.splitlines()]
    assert "./keep/a" not in names and "./gone" not in names and "./keep/c" not in names
    assert [n for n in names if n.startswith("./opq/")] == ["./opq/3"]
    assert "./owned/sub/new" in names and "./file-then-dir/inner" in names
    owned = next(line for line in ours.splitlines() if line.startswith("./owned "))
    assert " 1000 1000 700 " in owned  # the implied parent kept the lower layer's owner/mode


def test_discarded_layers_are_not_in_the_content_store_and_kept_ones_are(
    image_env: ImageEnv,
    short_tmp: Path,
    registry_http: Registry,
    repo_name: str,
) -> None:
    image = busybox_image(extra_layers=[LayerBuilder().file("/kept", b"k\n").build("k")])
    registry_http.push(repo_name, image, "v1")
    ref = registry_http.reference(repo_name, "v1")
    assert image_env.pull(ref) == image.id
    content = image_env.ctr("content", "ls", "-q").stdout.split()
    layers = [d.digest for d in image.layer_descriptors]
    assert not set(layers) & set(content)
    assert image.digest in content and image.id in content

    keep = private_env(short_tmp, image_env.containerd, discard_unpacked_layers=False)
    keep.proxy.start()
    try:
        image2 = busybox_image(extra_layers=[LayerBuilder().file("/kept2", b"k\n").build("k2")])
        registry_http.push(repo_name, image2, "v2")
        assert keep.pull(registry_http.reference(repo_name, "v2")) == image2.id
        content = keep.ctr("content", "ls").stdout
        top = image2.layer_descriptors[-1].digest
        row = next(line for line in content.splitlines() if line.startswith(top))
        assert f"containerd.io/uncompressed={image2.layers[-1].diff_id}" in row
        out = keep.ctr(
            "run", "--rm", registry_http.reference(repo_name, "v2"), "kept", "cat", "/kept2"
        )
        assert out.stdout == "k\n", out.stderr
    finally:
        keep.proxy.stop()


_HOSTILE = {
    "dotdot": (
        _raw_layer(
            ("../../../../../../tmp/criproxy-pwned", tarfile.REGTYPE, 0o644, 0, b"x"),
            created_by="escape",
        ),
        "climbs out",
    ),
    "dangling-symlink": (
        _raw_layer(
            ("evil", tarfile.SYMTYPE, 0o777, 0, b"/tmp"),
            ("evil/criproxy-pwned", tarfile.REGTYPE, 0o644, 0, b"x"),
            created_by="through a link",
        ),
        "leads nowhere",
    ),
}


@pytest.mark.parametrize("attack", sorted(_HOSTILE))
def test_a_hostile_layer_fails_the_pull_and_leaves_nothing(
    image_env: ImageEnv, registry_http: Registry, repo_name: str, attack: str
) -> None:
    layer, message = _HOSTILE[attack]
    image = busybox_image(extra_layers=[layer])
    registry_http.push(repo_name, image, "v1")
    snapshots_before = image_env.ctr("snapshots", "ls").stdout
    err = image_env.pull_error(registry_http.reference(repo_name, "v1"))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert message in err.details()
    assert image.layer_descriptors[-1].digest in err.details()
    assert not Path("/tmp/criproxy-pwned").exists()
    assert image_env.ctr("snapshots", "ls").stdout == snapshots_before
    assert image.layer_descriptors[-1].digest not in image_env.ctr("content", "ls", "-q").stdout
    assert image_env.ctr("leases", "ls", "-q").stdout.strip() == ""
    assert image_env.ctr("content", "active").stdout.count("\n") <= 1
