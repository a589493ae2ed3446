"""A checkpoint archive is untrusted input: every way one could reach outside its
directory, carry what a checkpoint does not, or claim a signature it lacks is refused,
with nothing written outside the directory restore unpacks into."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from criproxy.containerd import Mount
from criproxy.containers import restore, signing
from criproxy.errors import FailedPrecondition, InvalidArgument

KEY = b"k" * 32
SPEC = {"process": {"user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": ["CAP_KILL"]}}}


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **extra: object
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def _good() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        _member("config.dump", json.dumps({"rootfsImageRef": "busybox@sha256:ab"}).encode()),
        _member("spec.dump", json.dumps(SPEC).encode()),
        _member("status.dump", b"{}"),
        _member("checkpoint", kind=tarfile.DIRTYPE),
        _member("checkpoint/inventory.img", b"inv"),
        _member("checkpoint/pages-1.img", b"pages"),
    ]


def _archive(
    tmp_path: Path,
    members: list[tuple[tarfile.TarInfo, bytes]],
    *,
    secret: bytes | None = KEY,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> str:
    """A tar of these members, signed (over what they hold) unless `secret` is None."""
    import hashlib

    files = {i.name: hashlib.sha256(d).hexdigest() for i, d in members if i.type == tarfile.REGTYPE}
    if tamper is not None:
        tamper(files)
    path = tmp_path / "ckpt.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        if secret is not None:
            sig = signing.sign(files, secret)
            info = tarfile.TarInfo(signing.SIGNATURE)
            info.size = len(sig)
            tar.addfile(info, io.BytesIO(sig))
    return str(path)


def _outside(tmp_path: Path) -> list[str]:
    """What exists in tmp_path besides the archive and the unpack directory."""
    return sorted(p for p in os.listdir(tmp_path) if p not in ("ckpt.tar", "dest"))


def test_a_signed_checkpoint_unpacks(tmp_path: Path) -> None:
    cp = restore.unpack(_archive(tmp_path, _good()), tmp_path / "dest", KEY)
    assert (cp.images / "pages-1.img").read_bytes() == b"pages"
    assert cp.image_refs == ["busybox@sha256:ab"]
    assert cp.spec == SPEC
    assert not (tmp_path / "dest" / signing.SIGNATURE).exists()


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (_member("../evil", b"x"), "is not a plain relative name"),
        (_member("/etc/evil", b"x"), "is not a plain relative name"),
        (_member("checkpoint/../../evil", b"x"), "deeper than 2 directories"),
        (_member("evil", kind=tarfile.SYMTYPE, linkname="/etc"), "is a symbolic link"),
        (_member("checkpoint/x", kind=tarfile.SYMTYPE, linkname="/"), "is a symbolic link"),
        (
            _member("rootfs-diff.tar", kind=tarfile.LNKTYPE, linkname="/etc/shadow"),
            "is a hard link",
        ),
        (_member("dev", kind=tarfile.CHRTYPE, devmajor=1, devminor=3), "is a character device"),
        (_member("blk", kind=tarfile.BLKTYPE, devmajor=8, devminor=0), "is a block device"),
        (_member("fifo", kind=tarfile.FIFOTYPE), "is a FIFO"),
        (_member("notes.txt", b"x"), "is not one a checkpoint has"),
        (_member("etc", kind=tarfile.DIRTYPE), "is not one a checkpoint has"),
        (_member("checkpoint/sub/x", b"x"), "is not one a checkpoint has"),
        (_member("spec.dump", b" " * (restore.SMALL_MAX + 1)), "over"),
        (_member("config.dump", b"{}"), "appears twice"),
    ],
)
def test_a_hostile_member_is_refused_and_nothing_lands_outside(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], says: str
) -> None:
    archive = _archive(tmp_path, [*_good(), member])
    with pytest.raises(InvalidArgument) as err:
        restore.unpack(archive, tmp_path / "dest", KEY)
    assert says in err.value.message
    assert _outside(tmp_path) == []
    assert not Path("/etc/evil").exists()


def test_an_unsigned_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        restore.unpack(_archive(tmp_path, _good(), secret=None), tmp_path / "dest", KEY)
    assert "is not signed" in err.value.message


def test_an_archive_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        restore.unpack(_archive(tmp_path, _good(), secret=b"x" * 32), tmp_path / "dest", KEY)
    assert "does not match this node's checkpoint key" in err.value.message


def test_a_member_changed_after_signing_is_refused(tmp_path: Path) -> None:
    def changed_spec(files: dict[str, str]) -> None:
        files["spec.dump"] = "0" * 64  # what was signed is not what the archive holds

    with pytest.raises(FailedPrecondition) as err:
        restore.unpack(_archive(tmp_path, _good(), tamper=changed_spec), tmp_path / "dest", KEY)
    assert "spec.dump differ from what was signed" in err.value.message

    def added(files: dict[str, str]) -> None:
        del files["checkpoint/pages-1.img"]  # a member slipped in after signing

    with pytest.raises(FailedPrecondition):
        restore.unpack(_archive(tmp_path, _good(), tamper=added), tmp_path / "dest2", KEY)


def test_the_request_must_grant_what_the_checkpoint_had(tmp_path: Path) -> None:
    same = json.loads(json.dumps(SPEC))
    assert restore.security_differences(SPEC, same) == []
    more = json.loads(json.dumps(SPEC))
    more["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    assert restore.security_differences(SPEC, more) == ["process.capabilities"]
    other_user = json.loads(json.dumps(SPEC))
    other_user["process"]["user"]["uid"] = 1000
    other_user["linux"] = {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}
    assert restore.security_differences(SPEC, other_user) == ["process.user", "linux.seccomp"]
    moved = {**SPEC, "mounts": [{"destination": "/data", "type": "bind", "options": ["rw"]}]}
    assert restore.security_differences(SPEC, moved) == ["mounts"]


def _diff_archive(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]) -> restore.Checkpoint:
    """A verified checkpoint whose rootfs-diff.tar holds `member`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = member
        tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    members = [*_good(), _member("rootfs-diff.tar", buf.getvalue())]
    return restore.unpack(_archive(tmp_path, members), tmp_path / "dest", KEY)


def _overlay(tmp_path: Path) -> list[Mount]:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    lower.mkdir()
    return [Mount("overlay", "overlay", options=(f"lowerdir={lower}", f"upperdir={upper}"))]


def test_the_writable_layer_lands_in_the_new_snapshot(tmp_path: Path) -> None:
    cp = _diff_archive(tmp_path, _member("root-note", b"kept\n"))
    restore.apply_rootfs_diff(cp, _overlay(tmp_path), "a.tar")
    assert (tmp_path / "upper" / "root-note").read_bytes() == b"kept\n"


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (
            _member("dev/evil", kind=tarfile.CHRTYPE, devmajor=1, devminor=1),
            "holds a character device",
        ),
        (_member("dev/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0), "holds a block device"),
        (_member("../outside", b"x"), "is refused"),
    ],
)
def test_a_hostile_writable_layer_is_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], says: str
) -> None:
    cp = _diff_archive(tmp_path, member)
    with pytest.raises(InvalidArgument) as err:
        restore.apply_rootfs_diff(cp, _overlay(tmp_path), "a.tar")
    assert says in err.value.message
    assert not (tmp_path / "outside").exists()
    assert os.listdir(tmp_path / "upper") in ([], ["dev"])


def test_archive_paths_are_absolute_existing_files(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    assert restore.archive_path(str(archive)) == str(archive)
    assert restore.archive_path("busybox:latest") == ""
    assert restore.archive_path(str(tmp_path / "missing.tar")) == ""
    assert restore.archive_path(str(tmp_path)) == ""


# --- a checkpoint image: its unpacked layer's directory, walked -----------------------------


def _layer_dir(tmp_path: Path, *, secret: bytes | None = KEY) -> Path:
    """A checkpoint image's layer as a snapshot holds it: the good members as files."""
    layer = tmp_path / "layer"
    layer.mkdir(parents=True)
    with tarfile.open(_archive(tmp_path, _good(), secret=secret)) as tar:
        tar.extractall(layer, filter="fully_trusted")
    return layer


def test_a_signed_checkpoint_image_unpacks(tmp_path: Path) -> None:
    cp = restore.unpack_image(_layer_dir(tmp_path), tmp_path / "dest", KEY, "reg/ck:1")
    assert (cp.images / "inventory.img").read_bytes() == b"inv"
    assert cp.image_refs == ["busybox@sha256:ab"]
    assert cp.spec == SPEC


@pytest.mark.parametrize(
    ("plant", "says"),
    [
        (lambda d: (d / "evil").symlink_to("/etc"), "'evil' is a symbolic link"),
        (lambda d: (d / "checkpoint" / "x").symlink_to("/"), "'checkpoint/x' is a symbolic link"),
        (
            lambda d: (d / "spec.dump").unlink() or (d / "spec.dump").symlink_to("/etc/shadow"),
            "is a symbolic link",
        ),
        (lambda d: os.mkfifo(d / "fifo"), "'fifo' is a FIFO"),
        (
            lambda d: os.mknod(d / "dev", 0o600 | 0o020000, os.makedev(1, 3)),
            "is a character device",
        ),
        (lambda d: (d / "notes.txt").write_bytes(b"x"), "is not one a checkpoint has"),
        (lambda d: (d / "etc").mkdir(), "is not one a checkpoint has"),
        (lambda d: (d / "checkpoint" / "sub").mkdir(), "is not one a checkpoint has"),
        (lambda d: (d / "status.dump").write_bytes(b" " * (restore.SMALL_MAX + 1)), "over"),
    ],
)
def test_a_hostile_checkpoint_image_is_refused(
    tmp_path: Path, plant: Callable[[Path], object], says: str
) -> None:
    layer = _layer_dir(tmp_path)
    plant(layer)
    with pytest.raises(InvalidArgument) as err:
        restore.unpack_image(layer, tmp_path / "dest", KEY, "reg/ck:1")
    assert says in err.value.message
    assert "checkpoint image reg/ck:1" in err.value.message
    assert sorted(os.listdir(tmp_path)) == ["ckpt.tar", "dest", "layer"]


def test_a_checkpoint_image_must_carry_this_nodes_signature(tmp_path: Path) -> None:
    unsigned = _layer_dir(tmp_path / "a", secret=None)
    with pytest.raises(FailedPrecondition) as err:
        restore.unpack_image(unsigned, tmp_path / "a" / "dest", KEY, "reg/ck:1")
    assert "checkpoint image reg/ck:1 is not signed" in err.value.message
    signed = _layer_dir(tmp_path / "b")
    with pytest.raises(FailedPrecondition) as err:
        restore.unpack_image(signed, tmp_path / "b" / "dest", b"o" * 32, "reg/ck:1")
    assert "does not match this node's checkpoint key" in err.value.message


def test_a_checkpoint_image_changed_after_signing_is_refused(tmp_path: Path) -> None:
    layer = _layer_dir(tmp_path)
    (layer / "checkpoint" / "pages-1.img").write_bytes(b"other pages")
    with pytest.raises(FailedPrecondition) as err:
        restore.unpack_image(layer, tmp_path / "dest", KEY, "reg/ck:1")
    assert "checkpoint/pages-1.img differ from what was signed" in err.value.message
