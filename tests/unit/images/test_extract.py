"""Unpacking layer tars: the OCI changeset rules, and hostile layers confined to their root.

Every layer here is a tar written entry by entry (some of them impossible for a well-meaning
builder to produce), fed through the same parser and extractor a pull uses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from criproxy.containerd.types import Descriptor
from criproxy.errors import DataLoss
from criproxy.images import extract
from criproxy.images.extract import Extractor, Whiteouts
from criproxy.images.layerstream import LayerStream
from criproxy.images.tar import Limits, TarReader

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: needs root")

Add = Callable[[tarfile.TarFile], None]


def _tar(*adds: Add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for add in adds:
            add(tf)
    return buf.getvalue()


def reg(
    name: str,
    data: bytes = b"",
    mode: int = 0o644,
    *,
    uid: int = 0,
    gid: int = 0,
    pax: dict[str, str] | None = None,
) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, 1000
        if pax:
            info.pax_headers = pax
        tf.addfile(info, io.BytesIO(data))

    return add


def special(
    name: str,
    kind: bytes,
    *,
    linkname: str = "",
    mode: int = 0o755,
    uid: int = 0,
    major: int = 0,
    minor: int = 0,
    mtime: int = 2000,
) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.uid, info.mtime = kind, linkname, mode, uid, mtime
        info.devmajor, info.devminor = major, minor
        tf.addfile(info)

    return add


def directory(name: str, mode: int = 0o755, uid: int = 0, mtime: int = 3000) -> Add:
    return special(name, tarfile.DIRTYPE, mode=mode, uid=uid, mtime=mtime)


def symlink(name: str, target: str) -> Add:
    return special(name, tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str, mode: int = 0o755) -> Add:
    return special(name, tarfile.LNKTYPE, linkname=target, mode=mode)


def apply(
    root: Path,
    data: bytes,
    whiteouts: Whiteouts = "overlay",
    *,
    limits: Limits | None = None,
    lowerdirs: tuple[str, ...] = (),
) -> Extractor:
    ex = Extractor(str(root), whiteouts)
    try:
        reader = TarReader(ex, limits)
        for i in range(0, len(data), 777):  # odd pieces: headers and contents split anywhere
            reader.feed(data[i : i + 777])
        reader.close()
        ex.finish(str(root), lowerdirs)
    finally:
        ex.close()
    return ex


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory outside the root standing in for the host's files."""
    h = tmp_path / "host"
    h.mkdir()
    (h / "secret").write_text("host data")
    os.chmod(h / "secret", 0o600)
    return h


# --- the changeset rules -------------------------------------------------------------------


def test_files_directories_links_and_devices_with_owners_modes_and_times(root: Path) -> None:
    layer = _tar(
        directory("etc", 0o750, uid=7),
        reg("etc/passwd", b"root:x:0:0\n", 0o644, uid=1, gid=2),
        reg("bin/su", b"\x7fELF", 0o4755),
        symlink("bin/sh", "su"),
        hardlink("bin/su2", "bin/su", 0o4755),  # its header sets the shared inode
        special("dev/null", tarfile.CHRTYPE, major=1, minor=3, mode=0o666),
        special("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    )
    apply(root, layer)
    st = os.stat(root / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o750, 7, 3000)
    st = os.stat(root / "etc/passwd")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o644, 1, 2, 1000)
    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert stat.S_IMODE(os.stat(root / "bin/su").st_mode) == 0o4755  # setuid kept after chown
    assert os.readlink(root / "bin/sh") == "su"
    assert os.stat(root / "bin/su2").st_ino == os.stat(root / "bin/su").st_ino
    dev = os.stat(root / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1 and os.minor(dev.st_rdev) == 3
    assert stat.S_ISFIFO(os.stat(root / "run/fifo").st_mode)
    # parents the layer did not list are made 0755
    assert stat.S_IMODE(os.stat(root / "bin").st_mode) == 0o755


def test_overlay_whiteouts_are_what_overlayfs_reads_in_an_upper_directory(root: Path) -> None:
    layer = _tar(
        reg("a/.wh.gone"),
        directory("cache"),
        reg("cache/.wh..wh..opq"),
        reg("cache/new", b"n"),
        reg(".wh..wh..opq"),
    )
    ex = apply(root, layer, "overlay")
    gone = os.stat(root / "a/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(root / "cache", "trusted.overlay.opaque") == b"y"
    assert (root / "cache/new").read_bytes() == b"n"
    assert ex.root_opaque and os.getxattr(root, "trusted.overlay.opaque") == b"y"
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))


def test_remove_whiteouts_delete_from_the_layers_below(root: Path) -> None:
    below = _tar(
        reg("a/gone", b"x"),
        reg("a/kept", b"k"),
        directory("tree"),
        reg("tree/deep/f"),
        reg("cache/old1"),
        reg("cache/old2"),
    )
    apply(root, below, "remove")
    layer = _tar(
        reg("a/.wh.gone"), reg(".wh.tree"), reg("cache/new", b"n"), reg("cache/.wh..wh..opq")
    )  # the marker after an entry it must keep
    apply(root, layer, "remove")
    assert sorted(p.name for p in (root / "a").iterdir()) == ["kept"]
    assert not (root / "tree").exists()
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["new"]


def test_an_entry_replaces_what_was_there_but_directories_merge(root: Path) -> None:
    apply(
        root,
        _tar(reg("x", b"file"), directory("d"), reg("d/old", b"o"), symlink("s", "x")),
        "remove",
    )
    apply(
        root,
        _tar(directory("x", 0o700), reg("d/new"), directory("d", 0o711), reg("s", b"now a file")),
        "remove",
    )
    assert stat.S_ISDIR(os.lstat(root / "x").st_mode)
    assert sorted(p.name for p in (root / "d").iterdir()) == ["new", "old"]
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o711
    assert (root / "s").read_bytes() == b"now a file" and not (root / "s").is_symlink()


def test_implied_directories_take_their_attributes_from_the_layers_below(
    root: Path, tmp_path: Path
) -> None:
    lower = tmp_path / "lower"
    (lower / "var/lib/app").mkdir(parents=True)
    os.chown(lower / "var/lib/app", 1000, 1000)
    os.chmod(lower / "var/lib/app", 0o700)
    os.utime(lower / "var/lib/app", (5000, 5000))
    data = _tar(reg("var/lib/app/state", b"s"))  # no directory entries at all
    apply(root, data, "overlay", lowerdirs=(str(lower),))
    st = os.stat(root / "var/lib/app")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o700)
    assert st.st_mtime > 5000  # the time of the unpacking, as containerd leaves it
    assert stat.S_IMODE(os.stat(root / "var").st_mode) == 0o755


def test_a_layer_unpacked_on_its_own_moves_into_its_snapshot(root: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    ex = Extractor(str(staging), "overlay")
    reader = TarReader(ex)
    reader.feed(_tar(directory("etc", 0o700, mtime=4000), reg("etc/conf", b"c"), reg(".wh.x")))
    reader.close()
    extract.move_entries(str(staging), str(root))
    ex.finish(str(root), ())
    ex.close()
    assert list(staging.iterdir()) == []
    assert (root / "etc/conf").read_bytes() == b"c"
    assert os.stat(root / "etc").st_mtime == 4000  # times are set after the move
    assert stat.S_ISCHR(os.stat(root / "x").st_mode)


def test_long_names_and_pax_records(root: Path) -> None:
    long = "d/" + "n" * 200 + "/" + "f" * 150
    layer = _tar(reg(long, b"long", pax={"mtime": "1234.5", "uid": "4242"}))
    apply(root, layer)
    st = os.stat(root / long)
    assert st.st_uid == 4242 and st.st_mtime == 1234.5


def test_xattrs_only_from_the_namespaces_a_layer_may_set(root: Path) -> None:
    layer = _tar(
        reg(
            "f",
            b"x",
            pax={
                "SCHILY.xattr.user.note": "kept",
                "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                "SCHILY.xattr.trusted.evil": "no",
                "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
            },
        )
    )
    apply(root, layer)
    names = set(os.listxattr(root / "f"))
    assert "user.note" in names
    assert not {"trusted.overlay.redirect", "trusted.evil"} & names
    assert os.getxattr(root / "f", "user.note") == b"kept"


# --- hostile layers ------------------------------------------------------------------------


def _host_untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    assert (host / "secret").read_text() == "host data"
    st = os.stat(host / "secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1)


def test_dot_dot_entries_are_refused(root: Path, host: Path) -> None:
    rel = os.path.relpath(host, root)
    for name in (f"{rel}/pwned", "a/../../pwned", ".."):
        with pytest.raises(DataLoss, match="climbs out"):
            apply(root, _tar(reg(name, b"x")))
    _host_untouched(host)


def test_absolute_paths_land_inside_the_root(root: Path, host: Path) -> None:
    apply(root, _tar(reg(f"{host}/secret", b"inside")))
    assert (root / str(host).lstrip("/") / "secret").read_bytes() == b"inside"
    _host_untouched(host)


@pytest.mark.parametrize("target", ["HOST", "../../../../../../../../HOST", "/../HOST"])
def test_writes_through_a_symlinked_directory_stay_inside_the_root(
    root: Path, host: Path, target: str
) -> None:
    target = target.replace("HOST", str(host).lstrip("/")) if target != "HOST" else str(host)
    inside = root / str(host).lstrip("/")
    with pytest.raises(DataLoss, match="symlink that leads nowhere"):
        apply(root, _tar(symlink("escape", target), reg("escape/secret", b"pwned", 0o777)))
    _host_untouched(host)
    assert not inside.exists()
    (root / "escape").unlink()
    inside.mkdir(parents=True)  # now the link leads somewhere inside the root
    apply(
        root,
        _tar(
            symlink("escape", target),
            reg("escape/secret", b"pwned", 0o777),
            reg("escape/new", b"pwned"),
        ),
    )
    _host_untouched(host)
    assert (inside / "secret").read_bytes() == b"pwned"  # where the link leads inside the root
    assert (inside / "new").read_bytes() == b"pwned"


def test_a_symlink_is_never_followed_for_the_entry_it_names(root: Path, host: Path) -> None:
    """CVE-2021-32760's shape: a link to a host file, then an entry of the same name whose
    mode (or content) would have gone through the link."""
    apply(root, _tar(symlink("victim", str(host / "secret")), directory("victim", 0o777)))
    _host_untouched(host)
    assert stat.S_ISDIR(os.lstat(root / "victim").st_mode)
    apply(root, _tar(symlink("v2", str(host / "secret")), reg("v2", b"pwned", 0o777)))
    _host_untouched(host)
    assert (root / "v2").read_bytes() == b"pwned"


def test_hard_links_cannot_reach_outside_the_root(root: Path, host: Path) -> None:
    rel = os.path.relpath(host / "secret", root)
    with pytest.raises(DataLoss, match="climbs out"):
        apply(root, _tar(hardlink("h", rel)))
    with pytest.raises(DataLoss, match="not a file"):
        apply(root, _tar(hardlink("h", str(host / "secret"))))  # resolved inside: missing
    with pytest.raises(DataLoss, match="not a file"):
        apply(root, _tar(symlink("up", str(host)), hardlink("h", "up/secret")))
    _host_untouched(host)


def test_whiteouts_cannot_remove_outside_the_root(root: Path, host: Path) -> None:
    inside = root / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "secret").write_text("inside")
    apply(root, _tar(symlink("l", str(host)), reg("l/.wh.secret")), "remove")
    _host_untouched(host)
    assert not (inside / "secret").exists()
    with pytest.raises(DataLoss, match="not a valid whiteout"):
        apply(root, _tar(reg("a/.wh..")), "remove")
    _host_untouched(host)


def test_limits_on_entries_and_extension_headers(root: Path) -> None:
    many = _tar(*(reg(f"f{i}") for i in range(11)))
    with pytest.raises(DataLoss, match="more than 10 entries"):
        apply(root, many, limits=Limits(max_entries=10))
    big_pax = _tar(reg("x", pax={"comment": "c" * 5000}))
    with pytest.raises(DataLoss, match="extension header"):
        apply(root, big_pax, limits=Limits(max_header=4096))
    with pytest.raises(DataLoss, match="longer than"):
        apply(root, _tar(reg("p" * 300)), limits=Limits(max_path=255))
    with pytest.raises(DataLoss, match="oversized xattr"):
        apply(
            root,
            _tar(reg("x", pax={"SCHILY.xattr.user.big": "v" * 100})),
            limits=Limits(max_xattr_value=64),
        )


def test_sparse_unknown_and_truncated_tars_are_refused(root: Path) -> None:
    with pytest.raises(DataLoss, match="sparse"):
        apply(root, _tar(reg("s", b"x", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})))
    with pytest.raises(DataLoss, match="unsupported type"):
        apply(root, _tar(special("v", b"V")))
    whole = _tar(reg("f", b"x" * 2000))
    with pytest.raises(DataLoss, match="truncated"):
        apply(root, whole[:1500])
    bad = bytearray(_tar(reg("f", b"x")))
    bad[148:156] = b"0000000\0"  # checksum
    with pytest.raises(DataLoss, match="bad header"):
        apply(root, bytes(bad))


# --- the stream: digests and decompression ------------------------------------------------


def _desc(blob: bytes, media: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> Descriptor:
    return Descriptor(media, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))


def _stream(root: Path, blob: bytes, diff_id: str, desc: Descriptor | None = None) -> None:
    ex = Extractor(str(root), "overlay")
    try:
        ls = LayerStream(desc or _desc(blob), diff_id, ex)
        for i in range(0, len(blob), 1000):
            ls.feed(blob[i : i + 1000])
        ls.finish()
    finally:
        ex.close()


def test_gzip_members_and_zstd_frames_are_read_to_the_end(root: Path) -> None:
    import zstandard

    a, b = _tar(reg("a", b"1" * 5000))[:2048], _tar(reg("a", b"1" * 5000))[2048:]
    diff = "sha256:" + hashlib.sha256(a + b).hexdigest()
    _stream(root, gzip.compress(a) + gzip.compress(b), diff)
    assert (root / "a").read_bytes() == b"1" * 5000
    z = zstandard.ZstdCompressor()
    blob = z.compress(a) + z.compress(b)
    _stream(root, blob, diff, _desc(blob, "application/vnd.oci.image.layer.v1.tar+zstd"))
    _stream(root, a + b, diff, _desc(a + b, "application/vnd.oci.image.layer.v1.tar"))


def test_wrong_bytes_are_reported_as_a_digest_mismatch_not_a_tar_error(root: Path) -> None:
    good = gzip.compress(_tar(reg("a", b"x")))
    desc = _desc(good)
    bad = b"\0" * len(good)
    with pytest.raises(DataLoss, match="registry sent bytes with digest"):
        _stream(root, bad, "sha256:x", desc)


def test_a_wrong_diff_id_fails_the_layer(root: Path) -> None:
    blob = gzip.compress(_tar(reg("a", b"x")))
    with pytest.raises(DataLoss, match="wrong diff id"):
        _stream(root, blob, "sha256:" + "0" * 64)


def test_a_truncated_compressed_stream_fails_even_when_its_digest_matches(root: Path) -> None:
    blob = gzip.compress(_tar(reg("a", b"x" * 100_000)))[:-100]
    with pytest.raises(DataLoss, match=r"truncated|corrupt"):
        _stream(root, blob, "sha256:" + "0" * 64)


def test_a_decompression_bomb_stops_at_the_expansion_limit(root: Path) -> None:
    import zstandard

    tar = _tar(reg("zeros", b"\0" * (8 << 20)))
    blob = zstandard.ZstdCompressor(level=19).compress(tar)
    assert len(tar) / len(blob) > 1000
    desc = _desc(blob, "application/vnd.oci.image.layer.v1.tar+zstd")
    ex = Extractor(str(root), "overlay")
    try:
        ls = LayerStream(
            desc,
            "sha256:" + hashlib.sha256(tar).hexdigest(),
            ex,
            Limits(max_expansion=100, min_unpacked=1 << 20),
        )
        ls.feed(blob)
        with pytest.raises(DataLoss, match="unpacks to more than"):
            ls.finish()
        assert ls.unpacked < len(tar) // 4  # stopped early, not at the end
    finally:
        ex.close()


def test_encrypted_layers_are_not_streamed() -> None:
    from criproxy.images.layerstream import can_stream

    assert can_stream("application/vnd.oci.image.layer.v1.tar+gzip")
    assert can_stream("application/vnd.docker.image.rootfs.diff.tar.gzip")
    assert not can_stream("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")


# --- what review found: odd headers, caches, deep trees --------------------------------------


def test_nul_negative_numbers_and_non_finite_times_are_refused(root: Path) -> None:
    with pytest.raises(DataLoss, match="NUL"):
        apply(root, _tar(reg("a", b"x", pax={"path": "d\0/x/f"})))
    with pytest.raises(DataLoss, match="not a number"):
        apply(root, _tar(reg("a", b"x", pax={"mtime": "nan"})))

    def negative_uid(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("neg")
        info.uid = -1
        tf.addfile(info, io.BytesIO(b""))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        negative_uid(tf)  # base-256, which GNU tar writes for numbers that do not fit
    with pytest.raises(DataLoss, match="negative"):
        apply(root, buf.getvalue())
    assert not (root / "neg").exists()


def test_extension_headers_count_together_for_one_entry(root: Path) -> None:
    def pax_header(tf: tarfile.TarFile) -> None:
        record = b"30 comment=" + b"c" * 18 + b"\n"
        body = record * 100
        info = tarfile.TarInfo("././@PaxHeader")
        info.type, info.size = tarfile.XHDTYPE, len(body)
        tf.addfile(info, io.BytesIO(body))

    data = _tar(pax_header, pax_header, pax_header, reg("f", b"x"))
    apply(root, data, limits=Limits(max_header=10_000))  # 3 x 3,000 bytes: fine
    with pytest.raises(DataLoss, match="extension headers for one entry"):
        apply(root, data, limits=Limits(max_header=8_000))


def test_paths_deeper_than_the_limit_are_refused(root: Path) -> None:
    deep = "/".join(["d"] * 20) + "/f"
    with pytest.raises(DataLoss, match="deeper than"):
        apply(root, _tar(reg(deep)), limits=Limits(max_depth=10))
    apply(root, _tar(reg(deep)))


def test_a_symlink_replaced_by_a_directory_is_not_reached_through_a_stale_cache(
    root: Path,
) -> None:
    apply(
        root,
        _tar(
            directory("b"),
            symlink("a", "b"),
            reg("a/x", b"through the link"),
            directory("a"),  # replaces the symlink
            reg("a/y", b"in the new directory"),
        ),
    )
    assert (root / "b/x").read_bytes() == b"through the link"
    assert (root / "a/y").read_bytes() == b"in the new directory"
    assert not (root / "b/y").exists()


def test_hard_links_stay_right_when_the_directory_cache_is_emptied(root: Path) -> None:
    dirs = [reg(f"d{i}/f", b"x") for i in range(300)]  # more directories than the cache holds
    apply(root, _tar(reg("target/file", b"t"), *dirs, hardlink("d0/link", "target/file")))
    assert os.stat(root / "d0/link").st_ino == os.stat(root / "target/file").st_ino
    assert not (root / "target/link").exists()


def test_an_opaque_marker_in_remove_form_clears_the_lower_tree_at_any_depth(root: Path) -> None:
    apply(root, _tar(reg("cache/sub/old", b"o"), reg("cache/top", b"t")), "remove")
    apply(
        root,
        _tar(
            directory("cache"),
            directory("cache/sub"),
            reg("cache/sub/new", b"n"),
            reg("cache/.wh..wh..opq"),
        ),
        "remove",
    )
    assert sorted(p.relative_to(root).as_posix() for p in (root / "cache").rglob("*")) == [
        "cache/sub",
        "cache/sub/new",
    ]


def test_an_implied_directory_removed_later_in_the_layer_is_no_error(
    root: Path, tmp_path: Path
) -> None:
    lower = tmp_path / "lower"
    (lower / "a/b").mkdir(parents=True)
    apply(root, _tar(reg("a/b/f", b"x"), reg(".wh.a")), "overlay", lowerdirs=(str(lower),))
    assert stat.S_ISCHR(os.lstat(root / "a").st_mode)  # the whiteout, nothing below it
