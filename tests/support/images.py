"""Deterministic OCI and Docker images built from busybox-static, in pure Python.

Tests need real images whose digests they can predict: every tar entry has a fixed mtime,
owner and order, gzip headers carry no time or name, and JSON is written compactly in a
fixed key order, so the same inputs give the same digests on every run (on one zlib build).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import platform as _platform
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z, for every tar entry
FIXED_CREATED = "2024-01-01T00:00:00Z"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = Path("/bin/busybox")

MEDIA_OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # containerd's name
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"  # containerd's
MEDIA_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

ImageFormat = Literal["oci", "docker"]


class Compression(StrEnum):
    """How a layer's tar is shipped."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def zstd_available() -> bool:
    """zstd layers need the optional `zstandard` package."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Chain ids as the OCI image spec defines them (containerd names snapshots by these)."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- platforms and descriptors


@dataclass(frozen=True)
class Platform:
    """os/architecture[/variant], as in an index entry and an image config."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """`linux/arm64/v8` -> Platform('linux', 'arm64', 'v8')."""
        parts = spec.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"bad platform {spec!r}: want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def host_platform() -> Platform:
    """The platform whose binaries this machine runs (busybox here is built for it)."""
    machine = _platform.machine()
    table = {
        "x86_64": Platform("linux", "amd64"),
        "aarch64": Platform("linux", "arm64", "v8"),
        "armv7l": Platform("linux", "arm", "v7"),
        "ppc64le": Platform("linux", "ppc64le"),
        "s390x": Platform("linux", "s390x"),
        "riscv64": Platform("linux", "riscv64"),
    }
    return table.get(machine, Platform("linux", machine))


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] | None = None
    platform: Platform | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_json()
        return out


# ---------------------------------------------------------------- layers


@functools.lru_cache(maxsize=32)
def _compress(tar: bytes, compression: Compression, gzip_level: int) -> bytes:
    if compression is Compression.NONE:
        return tar
    if compression is Compression.GZIP:
        buf = io.BytesIO()
        # mtime=0 and no file name: the header is the same on every run
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=gzip_level, mtime=0) as gz:
            gz.write(tar)
        return buf.getvalue()
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the venv
        raise RuntimeError("zstd layers need the `zstandard` package") from exc
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(tar)


def _layer_media_type(fmt: ImageFormat, compression: Compression, foreign: bool) -> str:
    if fmt == "docker":
        if foreign:
            if compression is not Compression.GZIP:
                raise ValueError("Docker foreign layers are gzip only")
            return MEDIA_DOCKER_FOREIGN_LAYER_GZIP
        return {
            Compression.NONE: MEDIA_DOCKER_LAYER,
            Compression.GZIP: MEDIA_DOCKER_LAYER_GZIP,
            Compression.ZSTD: MEDIA_DOCKER_LAYER_ZSTD,
        }[compression]
    if foreign:
        return {
            Compression.NONE: MEDIA_OCI_LAYER_NONDIST,
            Compression.GZIP: MEDIA_OCI_LAYER_NONDIST_GZIP,
            Compression.ZSTD: MEDIA_OCI_LAYER_NONDIST_ZSTD,
        }[compression]
    return {
        Compression.NONE: MEDIA_OCI_LAYER,
        Compression.GZIP: MEDIA_OCI_LAYER_GZIP,
        Compression.ZSTD: MEDIA_OCI_LAYER_ZSTD,
    }[compression]


@dataclass(frozen=True)
class Layer:
    """One filesystem changeset (an uncompressed tar) and how an image ships it.

    `compression=None` takes the image's default; non-empty `urls` make it a foreign
    (non-distributable) layer: its descriptor carries the urls and no registry gets the blob.
    """

    tar: bytes = field(repr=False)
    created_by: str = "criproxy tests"
    compression: Compression | None = None
    urls: tuple[str, ...] = ()

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def foreign(self) -> bool:
        return bool(self.urls)

    def blob(self, compression: Compression = Compression.GZIP, gzip_level: int = 6) -> bytes:
        """The bytes a registry serves for this layer when shipped with `compression`."""
        return _compress(self.tar, Compression(compression), gzip_level)

    def compressed(self, compression: Compression) -> Layer:
        return dataclasses.replace(self, compression=Compression(compression))

    def with_urls(self, *urls: str) -> Layer:
        """This layer as a foreign / non-distributable one, fetched from `urls`."""
        return dataclasses.replace(self, urls=tuple(urls))

    def names(self) -> list[str]:
        """The tar member names, in order (directories end in `/`)."""
        with tarfile.open(fileobj=io.BytesIO(self.tar), mode="r:") as tf:
            return [m.name + ("/" if m.isdir() else "") for m in tf.getmembers()]

    def read(self, path: str) -> bytes:
        """The content of one regular file in this layer."""
        with tarfile.open(fileobj=io.BytesIO(self.tar), mode="r:") as tf:
            f = tf.extractfile(_norm(path))
            if f is None:
                raise KeyError(path)
            return f.read()


def _norm(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad path in layer: {path!r}")
    return "/".join(parts)


class LayerBuilder:
    """Builds a layer tar entry by entry; parent directories appear on their own (0755, root).

    Entries keep the order they were added in (parents first), which makes the tar, and so
    the digests, a function of the calls alone.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
        self._implicit: set[str] = set()

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = FIXED_MTIME
        return info

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._entries:
                self._entries[parent] = (self._info(parent, tarfile.DIRTYPE, 0o755, 0, 0), None)
                self._implicit.add(parent)

    def _add(self, info: tarfile.TarInfo, data: bytes | None) -> LayerBuilder:
        path = info.name
        if path in self._entries:
            if path in self._implicit and info.type == tarfile.DIRTYPE:
                self._implicit.discard(path)
                self._entries[path] = (info, None)  # keeps its place, takes the new mode
                return self
            raise ValueError(f"{path!r} is already in this layer")
        self._parents(path)
        self._entries[path] = (info, data)
        return self

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        return self._add(self._info(_norm(path), tarfile.DIRTYPE, mode, uid, gid), None)

    def file(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> LayerBuilder:
        info = self._info(_norm(path), tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        return self._add(info, data)

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> LayerBuilder:
        info = self._info(_norm(path), tarfile.SYMTYPE, 0o777, uid, gid)
        info.linkname = target
        return self._add(info, None)

    def hardlink(self, path: str, target: str) -> LayerBuilder:
        """A hard link to `target`, which must be earlier in this layer."""
        target = _norm(target)
        if target not in self._entries:
            raise ValueError(f"hard link target {target!r} must come first")
        info = self._info(_norm(path), tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target
        return self._add(info, None)

    def whiteout(self, path: str) -> LayerBuilder:
        """Deletes `path` from the layers below (`.wh.<name>`)."""
        head, _, name = _norm(path).rpartition("/")
        return self.file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"")

    def opaque(self, path: str) -> LayerBuilder:
        """Hides everything below `path` from the layers below (`.wh..wh..opq`)."""
        path = _norm(path)
        if path not in self._entries:
            self.dir(path)
        return self.file(f"{path}/.wh..wh..opq", b"")

    def build(self, created_by: str = "criproxy tests") -> Layer:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self._entries.values():
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return Layer(buf.getvalue(), created_by=created_by)


@dataclass(frozen=True)
class User:
    """An /etc/passwd user; `groups` are supplementary (name, gid) memberships in /etc/group."""

    name: str
    uid: int
    gid: int
    home: str | None = None
    shell: str = "/bin/sh"
    groups: tuple[tuple[str, int], ...] = ()

    @property
    def home_dir(self) -> str:
        return self.home or f"/home/{self.name}"


TEST_USER = User("tester", 1000, 1000, groups=(("staff", 50), ("www-data", 33)))

BASE_USERS = (
    User("root", 0, 0, "/root"),
    User("daemon", 1, 1, "/usr/sbin", "/bin/false"),
    User("www-data", 33, 33, "/var/www", "/bin/false"),
    User("nobody", 65534, 65534, "/nonexistent", "/bin/false"),
)
BASE_GROUPS = (("root", 0), ("daemon", 1), ("www-data", 33), ("nogroup", 65534))

DEFAULT_APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "sleep", "id", "env", "true", "false", "whoami", "top",
    "ps", "mkdir", "touch", "wc", "head", "tail", "grep", "ping", "nc", "wget", "hostname",
    "kill", "rm", "cp", "mv", "ln", "chmod", "chown", "pwd", "uname", "date", "df", "du",
    "find", "sed", "awk", "sort", "uniq", "tr", "tee", "test", "[", "stat", "readlink",
    "mount", "cut", "xargs", "printf", "dd", "sync", "timeout", "nslookup", "ip", "ifconfig",
    "netstat", "sha256sum", "md5sum", "seq", "yes", "tar", "gzip", "gunzip", "which", "nproc",
    "free", "uptime", "mkfifo", "stty", "vi", "groups", "nsenter", "unshare", "mknod",
)  # fmt: skip


def passwd_and_group(users: Sequence[User]) -> tuple[bytes, bytes]:
    """/etc/passwd and /etc/group for the base accounts plus `users`."""
    all_users = [*BASE_USERS, *users]
    passwd = "".join(
        f"{u.name}:x:{u.uid}:{u.gid}:{u.name}:{u.home_dir}:{u.shell}\n" for u in all_users
    )
    groups: dict[int, tuple[str, list[str]]] = {gid: (n, []) for n, gid in BASE_GROUPS}
    for u in users:
        groups.setdefault(u.gid, (u.name, []))
        for gname, gid in u.groups:
            groups.setdefault(gid, (gname, []))[1].append(u.name)
    group = "".join(f"{n}:x:{gid}:{','.join(m)}\n" for gid, (n, m) in groups.items())
    return passwd.encode(), group.encode()


def busybox_layer(
    *,
    users: Sequence[User] = (TEST_USER,),
    applets: Sequence[str] = DEFAULT_APPLETS,
    busybox: Path = BUSYBOX,
) -> Layer:
    """A runnable rootfs: static busybox, applet symlinks in /bin, passwd/group, /tmp, homes.

    Cached per arguments: the 2 MB tar and its gzip are built once per session.
    """
    return _busybox_layer(tuple(users), tuple(applets), Path(busybox))


@functools.lru_cache(maxsize=8)
def _busybox_layer(users: tuple[User, ...], applets: tuple[str, ...], busybox: Path) -> Layer:
    b = LayerBuilder()
    for d in ("bin", "dev", "etc", "home", "proc", "sys", "usr", "usr/bin", "var"):
        b.dir(d)
    b.dir("root", 0o700)
    b.dir("tmp", 0o1777)
    b.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in dict.fromkeys(applets):
        if applet != "busybox":
            b.symlink(f"bin/{applet}", "busybox")
    b.symlink("usr/bin/env", "/bin/busybox")
    passwd, group = passwd_and_group(users)
    b.file("etc/passwd", passwd)
    b.file("etc/group", group)
    for u in users:
        b.dir(u.home_dir, 0o755, u.uid, u.gid)
    return b.build("busybox-static rootfs")


def file_layer(
    files: Mapping[str, bytes | tuple[bytes, int]], *, created_by: str = "files"
) -> Layer:
    """A layer of extra files (path -> content or (content, mode)), in sorted path order."""
    b = LayerBuilder()
    for path in sorted(files, key=_norm):
        value = files[path]
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        b.file(path, data, mode)
    return b.build(created_by)


def random_bytes(size: int, seed: int | str = 0) -> bytes:
    """Incompressible bytes that depend only on (size, seed)."""
    return hashlib.shake_256(f"criproxy-random:{seed}".encode()).digest(size)


def random_layer(size: int, seed: int | str = 0, *, path: str = "/data/random.bin") -> Layer:
    """One file of `size` incompressible pseudo-random bytes (benchmarks, multi-layer)."""
    return file_layer({path: random_bytes(size, seed)}, created_by=f"random {size} seed={seed}")


# ---------------------------------------------------------------- images and indexes


@dataclass(frozen=True)
class ImageConfig:
    """The `config` part of an image config (what a container runs with)."""

    user: str | None = None
    env: Sequence[str] = (DEFAULT_PATH_ENV,)
    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = ("sh",)
    working_dir: str | None = None
    labels: Mapping[str, str] | None = None
    stop_signal: str | None = None
    exposed_ports: Sequence[str] = ()  # "80/tcp"
    volumes: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user is not None:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir is not None:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal is not None:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class Image:
    """One single-platform image: manifest, config and layers, with every digest at hand.

    `blobs` is what a registry serves under /blobs/ (config and distributable layers);
    `content` adds the manifest: what a content store holds after a pull.
    """

    format: ImageFormat
    platform: Platform
    layers: tuple[Layer, ...]
    layer_descriptors: tuple[Descriptor, ...]
    config: bytes = field(repr=False)
    config_descriptor: Descriptor
    manifest: bytes = field(repr=False)
    descriptor: Descriptor
    blobs: Mapping[str, bytes] = field(repr=False)
    foreign_blobs: Mapping[str, bytes] = field(repr=False)

    @property
    def digest(self) -> str:
        """The manifest digest (what `name@digest` pins)."""
        return self.descriptor.digest

    @property
    def id(self) -> str:
        """The image id: the config digest."""
        return self.config_descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def config_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.config)
        return result

    @property
    def manifest_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.manifest)
        return result

    @property
    def content(self) -> dict[str, bytes]:
        return {**self.blobs, self.digest: self.manifest}

    @property
    def content_size(self) -> int:
        """Manifest + config + every layer descriptor's size (containerd's images.Size)."""
        return (
            self.descriptor.size
            + self.config_descriptor.size
            + sum(d.size for d in self.layer_descriptors)
        )


@dataclass(frozen=True)
class Index:
    """A multi-platform image: an OCI image index or a Docker manifest list."""

    format: ImageFormat
    images: tuple[Image, ...]
    index: bytes = field(repr=False)
    descriptor: Descriptor

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def index_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.index)
        return result

    @property
    def blobs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for image in self.images:
            out.update(image.blobs)
        return out

    @property
    def content(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for image in self.images:
            out.update(image.content)
        out[self.digest] = self.index
        return out

    def image_for(self, platform: Platform | str) -> Image:
        wanted = Platform.parse(platform) if isinstance(platform, str) else platform
        for image in self.images:
            if image.platform == wanted:
                return image
        raise KeyError(f"no image for {wanted} in this index")


def build_image(
    layers: Sequence[Layer],
    *,
    config: ImageConfig | None = None,
    platform: Platform | str | None = None,
    fmt: ImageFormat = "oci",
    compression: Compression = Compression.GZIP,
    gzip_level: int = 6,
    created: str = FIXED_CREATED,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """A single-platform image of `layers` (bottom first); platform defaults to the host's."""
    if fmt not in ("oci", "docker"):
        raise ValueError(f"unknown image format {fmt!r}")
    plat = Platform.parse(platform) if isinstance(platform, str) else platform or host_platform()
    cfg = config or ImageConfig()
    descriptors: list[Descriptor] = []
    blobs: dict[str, bytes] = {}
    foreign: dict[str, bytes] = {}
    for layer in layers:
        comp = Compression(layer.compression or compression)
        data = layer.blob(comp, gzip_level)
        media_type = _layer_media_type(fmt, comp, layer.foreign)
        desc = dataclasses.replace(Descriptor.of(media_type, data), urls=layer.urls)
        descriptors.append(desc)
        (foreign if layer.foreign else blobs)[desc.digest] = data

    config_doc: dict[str, Any] = {"created": created, **plat.to_json()}
    config_doc["config"] = cfg.to_json()
    config_doc["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config_doc["history"] = [{"created": created, "created_by": x.created_by} for x in layers]
    config_bytes = _dumps(config_doc)
    config_media = MEDIA_OCI_CONFIG if fmt == "oci" else MEDIA_DOCKER_CONFIG
    config_desc = Descriptor.of(config_media, config_bytes)

    manifest_media = MEDIA_OCI_MANIFEST if fmt == "oci" else MEDIA_DOCKER_MANIFEST
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_media,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in descriptors],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("Docker schema 2 manifests have no annotations")
        manifest_doc["annotations"] = dict(annotations)
    manifest = _dumps(manifest_doc)
    return Image(
        format=fmt,
        platform=plat,
        layers=tuple(layers),
        layer_descriptors=tuple(descriptors),
        config=config_bytes,
        config_descriptor=config_desc,
        manifest=manifest,
        descriptor=Descriptor.of(manifest_media, manifest),
        blobs={config_desc.digest: config_bytes, **blobs},
        foreign_blobs=foreign,
    )


def busybox_image(
    *,
    config: ImageConfig | None = None,
    extra_layers: Sequence[Layer] = (),
    fmt: ImageFormat = "oci",
    compression: Compression = Compression.GZIP,
    platform: Platform | str | None = None,
) -> Image:
    """The everyday test image: the busybox rootfs, optionally with layers on top."""
    return build_image(
        [busybox_layer(), *extra_layers],
        config=config,
        fmt=fmt,
        compression=compression,
        platform=platform,
    )


def build_index(
    images: Sequence[Image],
    *,
    fmt: ImageFormat | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Index:
    """An OCI index or Docker manifest list over `images` (format defaults to theirs)."""
    if not images:
        raise ValueError("an index needs at least one image")
    fmt = fmt or images[0].format
    if fmt == "docker" and any(i.format != "docker" for i in images):
        raise ValueError("a Docker manifest list holds Docker schema 2 manifests only")
    media_type = MEDIA_OCI_INDEX if fmt == "oci" else MEDIA_DOCKER_LIST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            dataclasses.replace(i.descriptor, platform=i.platform).to_json() for i in images
        ],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("Docker manifest lists have no annotations")
        doc["annotations"] = dict(annotations)
    data = _dumps(doc)
    return Index(fmt, tuple(images), data, Descriptor.of(media_type, data))


DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")


def build_multiplatform(
    layers: Sequence[Layer] | None = None,
    platforms: Sequence[Platform | str] = DEFAULT_PLATFORMS,
    *,
    config: ImageConfig | None = None,
    fmt: ImageFormat = "oci",
    compression: Compression = Compression.GZIP,
    marker: bool = True,
) -> Index:
    """One image per platform over the same layers (default: busybox; only the host's runs).

    With `marker`, each image gets a last layer with /etc/platform naming its platform, so
    a test can tell from the rootfs which one was pulled.
    """
    base = list(layers) if layers is not None else [busybox_layer()]
    images = []
    for p in platforms:
        plat = Platform.parse(p) if isinstance(p, str) else p
        extra = [file_layer({"/etc/platform": f"{plat}\n".encode()})] if marker else []
        images.append(
            build_image(
                [*base, *extra], config=config, platform=plat, fmt=fmt, compression=compression
            )
        )
    return build_index(images, fmt=fmt)


# ---------------------------------------------------------------- archives


class _ArchiveWriter:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.seen: set[str] = set()

    def dir(self, name: str) -> None:
        if name not in self.seen:
            self.seen.add(name)
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            self.tf.addfile(info)

    def file(self, name: str, data: bytes) -> None:
        if name in self.seen:
            return
        parts = name.split("/")
        for i in range(1, len(parts)):
            self.dir("/".join(parts[:i]))
        self.seen.add(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, FIXED_MTIME
        self.tf.addfile(info, io.BytesIO(data))

    def finish(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def _ref_object(name: str) -> str:
    """The tag (and/or @digest) of a reference: what containerd writes as the OCI ref name."""
    rest, at, digest = name.partition("@")
    last = rest.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    obj = tag + (f"@{digest}" if at else "")
    return obj or name


def oci_archive(image: Image | Index, names: Sequence[str] = ()) -> bytes:
    """An OCI image layout tar, as `ctr images export` writes it (foreign blobs left out).

    index.json has one entry per name, annotated with the full name
    (`io.containerd.image.name`) and the tag (`org.opencontainers.image.ref.name`).
    """
    w = _ArchiveWriter()
    w.file("oci-layout", _dumps({"imageLayoutVersion": MEDIA_OCI_LAYOUT_VERSION}))
    entries = [
        dataclasses.replace(
            image.descriptor,
            annotations={ANNOTATION_CONTAINERD_NAME: n, ANNOTATION_REF_NAME: _ref_object(n)},
        ).to_json()
        for n in names
    ] or [image.descriptor.to_json()]
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}
    w.file("index.json", _dumps(index))
    for digest, data in sorted(image.content.items()):
        w.file("blobs/" + digest.replace(":", "/"), data)
    return w.finish()


def docker_save_archive(image: Image, repo_tags: Sequence[str] = ()) -> bytes:
    """A `docker save` tar: manifest.json, repositories, `<id>.json`, `<layer>/layer.tar`."""
    w = _ArchiveWriter()
    layer_ids = [c.split(":", 1)[1] for c in image.chain_ids]
    parent = ""
    for layer_id, layer in zip(layer_ids, image.layers, strict=True):
        w.file(f"{layer_id}/VERSION", b"1.0")
        meta: dict[str, Any] = {"id": layer_id, "created": FIXED_CREATED}
        if parent:
            meta["parent"] = parent
        w.file(f"{layer_id}/json", _dumps(meta))
        w.file(f"{layer_id}/layer.tar", layer.tar)
        parent = layer_id
    config_name = image.id.split(":", 1)[1] + ".json"
    w.file(config_name, image.config)
    manifest = [
        {
            "Config": config_name,
            "RepoTags": list(repo_tags) or None,
            "Layers": [f"{i}/layer.tar" for i in layer_ids],
        }
    ]
    w.file("manifest.json", _dumps(manifest))
    repositories: dict[str, dict[str, str]] = {}
    for tag in repo_tags:
        repo, _, t = tag.rpartition(":")
        if not repo or "/" in t:
            raise ValueError(f"repo tag {tag!r} needs a :tag")
        repositories.setdefault(repo, {})[t] = layer_ids[-1]
    if repositories:
        w.file("repositories", _dumps(repositories))
    return w.finish()
