"""The checkpoint archive's pieces: the writable layer's diff, the all-or-nothing file,
the config dump, and CRIU's discovery."""

from __future__ import annotations

import datetime
import json
import os
import tarfile
from pathlib import Path

import pytest

from criproxy import criu
from criproxy.containers import checkpoint


def _upper(tmp_path: Path) -> Path:
    """An overlay upper directory as a container leaves it: a new file, a replaced
    directory (opaque), a deleted file (a 0/0 character device), a symlink, a hard link."""
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new.conf").write_text("new\n")
    os.link(upper / "etc" / "new.conf", upper / "etc" / "also.conf")
    os.mknod(upper / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))
    (upper / "data").mkdir()
    os.setxattr(upper / "data", "trusted.overlay.opaque", b"y")
    (upper / "data" / "fresh").write_bytes(b"\x00\x01")
    os.setxattr(upper / "data" / "fresh", "user.note", b"kept")
    os.setxattr(upper / "data" / "fresh", "trusted.other", b"dropped")
    os.symlink("/etc/new.conf", upper / "link")
    return upper


def test_the_rootfs_diff_is_an_oci_layer_with_the_deletions_listed(tmp_path: Path) -> None:
    out = tmp_path / "rootfs-diff.tar"
    deleted = checkpoint._rootfs_diff(_upper(tmp_path), out)
    assert deleted == ["/etc/group"]
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "data",
            "data/.wh..wh..opq",
            "data/fresh",
            "etc",
            "etc/also.conf",
            "etc/new.conf",
            "etc/.wh.group",
            "link",
        }
        assert members["link"].issym() and members["link"].linkname == "/etc/new.conf"
        linked = {members["etc/also.conf"].islnk(), members["etc/new.conf"].islnk()}
        assert linked == {True, False}  # one file, two names
        fresh = members["data/fresh"]
        assert fresh.pax_headers.get("SCHILY.xattr.user.note") == "kept"
        assert "SCHILY.xattr.trusted.other" not in fresh.pax_headers
        assert tar.extractfile("data/fresh").read() == b"\x00\x01"  # type: ignore[union-attr]


def test_the_archive_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    destination = tmp_path / "out.tar"
    destination.write_bytes(b"an older archive")
    with pytest.raises(RuntimeError), checkpoint._unnamed_file(destination) as out:
        out.write(b"half")
        assert os.listdir(tmp_path) == ["out.tar"]  # nothing named while it is written
        raise RuntimeError("the dump failed")
    assert os.listdir(tmp_path) == ["out.tar"]
    assert destination.read_bytes() == b"an older archive"

    with checkpoint._unnamed_file(destination) as out:
        out.write(b"whole")
    assert os.listdir(tmp_path) == ["out.tar"]
    assert destination.read_bytes() == b"whole"
    assert destination.stat().st_mode & 0o777 == 0o600


def test_times_are_written_as_go_writes_them() -> None:
    when = datetime.datetime(2026, 12, 2, 14, 8, 29, 123456, tzinfo=datetime.UTC)
    assert checkpoint._go_time(when) == "2026-12-02T14:08:29.123456Z"


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ("echo 'Version: 3.17.1'", "is 3.17.1; checkpoints need CRIU >= 4.0"),
        ("echo nothing", "printed no version: 'nothing'"),
        (
            'case "$1" in --version) echo "Version: 4.2";; check) echo "no soft-dirty" >&2; '
            "exit 1;; esac",
            "check` fails on this host: no soft-dirty",
        ),
    ],
)
def test_a_criu_that_cannot_checkpoint_says_why(tmp_path: Path, script: str, problem: str) -> None:
    fake = tmp_path / "criu"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    found = criu.probe(str(fake))
    assert not found.usable
    assert problem in found.problem
    # runc is still told this one, never the shim's PATH; the probe refuses checkpoints
    assert criu.runc_path(str(fake)) == str(fake)


def test_a_working_criu_is_kept_and_handed_to_runc(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo "Version: 4.2";; esac\n')
    fake.chmod(0o755)
    found = criu.cached(str(fake))
    assert (found.usable, found.version, found.path) == (True, "4.2", str(fake))
    assert criu.runc_path(str(fake)) == str(fake)
    fake.unlink()
    assert criu.cached(str(fake)) is found  # kept: no probe per call


def test_runc_is_told_criproxys_criu_before_any_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert criu.runc_path("") == ""
    on_path = tmp_path / "criu"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert criu.runc_path("") == str(on_path)  # the one a probe would check
    assert criu.runc_path("/opt/criu/criu") == "/opt/criu/criu"


def test_a_missing_criu_path_is_named(tmp_path: Path) -> None:
    found = criu.probe(str(tmp_path / "nope"))
    assert found.problem == f"[checkpoint] criu_path {tmp_path / 'nope'} is not a file"


def test_config_dump_has_checkpointctls_fields() -> None:
    from tests.unit.containers.test_model import _full

    container = _full()
    at = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
    dump = checkpoint._config_dump(container, at)
    assert set(dump) == {
        "id",
        "name",
        "rootfsImage",
        "rootfsImageRef",
        "rootfsImageName",
        "runtime",
        "createdTime",
        "checkpointedTime",
        "restoredTime",
        "restored",
    }
    assert dump["id"] == container.id
    assert dump["rootfsImageRef"] == container.image.ref
    assert dump["checkpointedTime"] == "2026-12-02T00:00:00.000000Z"
    json.dumps(dump)


def test_the_sweep_removes_only_the_hidden_directories_its_notes_name(tmp_path: Path) -> None:
    from criproxy.containers import checkpoint_pod

    root = tmp_path / "checkpoints"
    root.mkdir()
    output = tmp_path / "out"
    output.mkdir()
    partial = output / f"{checkpoint_pod.PARTIAL_PREFIX}1234"
    partial.mkdir()
    (partial / "a.tar").write_text("half")
    (root / f"{partial.name}.partial").write_text(str(partial))
    precious = tmp_path / "precious"
    precious.mkdir()
    (root / "evil.partial").write_text(str(precious))  # not a name criproxy makes
    assert checkpoint_pod.sweep_partial(root) == [str(partial)]
    assert not partial.exists()
    assert precious.exists()
    assert checkpoint_pod.sweep_partial(tmp_path / "none") == []


def test_the_diff_never_reads_through_a_link_or_chokes_on_a_socket(tmp_path: Path) -> None:
    """The container runs while its upper directory is read: a directory or file it swaps
    for a link to the host is archived as that link, never followed."""
    import socket

    upper = tmp_path / "upper"
    upper.mkdir()
    os.symlink("/etc", upper / "etc-link")  # a link to a host directory
    os.symlink("/etc/hostname", upper / "file-link")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(upper / "app.sock"))
        out = tmp_path / "diff.tar"
        assert checkpoint._rootfs_diff(upper, out) == []
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"etc-link", "file-link"}  # the socket skipped, nothing below /etc
    assert members["etc-link"].issym() and members["etc-link"].linkname == "/etc"
    assert members["file-link"].issym()


def test_one_checkpoint_at_a_time_per_container() -> None:
    from types import SimpleNamespace

    from criproxy.errors import FailedPrecondition

    deps = SimpleNamespace(checkpointing=set())
    a, b = SimpleNamespace(id="a"), SimpleNamespace(id="b")
    with checkpoint.claimed(deps, [a, b]):  # type: ignore[arg-type]
        with pytest.raises(FailedPrecondition) as err, checkpoint.claimed(deps, [b]):  # type: ignore[arg-type]
            pass
        assert err.value.message == "a checkpoint of container b is under way"
    assert deps.checkpointing == set()
    with checkpoint.claimed(deps, [b]):  # type: ignore[arg-type]
        pass
