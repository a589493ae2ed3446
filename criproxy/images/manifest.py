"""Parsing OCI / Docker manifests, indexes and image configs; platform matching; chain ids."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from criproxy.containerd.types import Descriptor
from criproxy.errors import DataLoss, NotFound
from criproxy.images.registry import INDEX_TYPES

NON_DISTRIBUTABLE_PREFIXES = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)


def is_non_distributable(media_type: str) -> bool:
    return media_type.startswith(NON_DISTRIBUTABLE_PREFIXES)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    variant = {"arm64": "v8", "arm": "v7"}.get(arch, "")
    return Platform("linux", arch, variant)


def _normalize_variant(arch: str, variant: str) -> str:
    if arch == "arm64" and variant in ("", "8"):
        return "v8"
    if arch == "arm" and variant in ("", "7"):
        return "v7"
    return variant


def platform_matches(want: Platform, os: str, arch: str, variant: str) -> bool:
    """containerd's `platforms.Only` for the host: same OS and architecture, compatible variant.

    amd64 accepts any variant at or below the host's (none here means v1); arm64 v8;
    arm v7 also runs v6 and v5.
    """
    if os != want.os or arch != want.architecture:
        return False
    variant = _normalize_variant(arch, variant)
    wanted = _normalize_variant(arch, want.variant)
    if arch == "amd64":
        return variant in ("", "v1") or (bool(wanted) and variant <= wanted)
    if arch == "arm":
        return variant in ("v5", "v6", "v7") and variant <= wanted
    return variant == wanted


def _loads(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise DataLoss(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise DataLoss(f"{what} is not a JSON object")
    return data


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise DataLoss(f"{what}: a descriptor without a digest")
    return Descriptor(
        str(raw.get("mediaType", "")),
        raw["digest"],
        int(raw.get("size", 0)),
        {str(k): str(v) for k, v in (raw.get("annotations") or {}).items()},
    )


@dataclass(frozen=True)
class IndexEntry:
    descriptor: Descriptor
    platform: Platform | None


def parse_index(body: bytes) -> list[IndexEntry]:
    data = _loads(body, "image index")
    entries = []
    for raw in data.get("manifests") or []:
        desc = _descriptor(raw, "image index")
        plat = raw.get("platform")
        entries.append(
            IndexEntry(
                desc,
                Platform(
                    str(plat.get("os", "")),
                    str(plat.get("architecture", "")),
                    str(plat.get("variant", "")),
                )
                if isinstance(plat, dict)
                else None,
            )
        )
    return entries


def select_manifest(entries: list[IndexEntry], want: Platform) -> Descriptor:
    """The manifest for `want`: the best variant match first (as containerd orders them)."""
    matches = [
        e
        for e in entries
        if e.platform is not None
        and e.descriptor.media_type not in INDEX_TYPES
        and platform_matches(want, e.platform.os, e.platform.architecture, e.platform.variant)
    ]
    if not matches:
        available = ", ".join(
            f"{e.platform.os}/{e.platform.architecture}"
            + (f"/{e.platform.variant}" if e.platform.variant else "")
            for e in entries
            if e.platform
        )
        raise NotFound(
            f"no match for platform {want.os}/{want.architecture} in the image index "
            f"(it has: {available or 'no platforms'})"
        )
    matches.sort(
        key=lambda e: (
            _normalize_variant(e.platform.architecture, e.platform.variant) if e.platform else ""
        ),
        reverse=True,
    )
    return matches[0].descriptor


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    layer_urls: tuple[tuple[str, ...], ...] = ()
    """Per layer, the `urls` a non-distributable layer names (empty for ordinary ones)."""
    annotations: dict[str, str] = field(default_factory=dict, compare=False)


CHECKPOINT_NAME_ANNOTATIONS = (
    "io.kubernetes.cri-o.annotations.checkpoint.name",  # checkpointctl build, CRI-O, Podman
    "checkpointctl.annotation.checkpoint.name",  # containerd
)
"""Manifest annotations that make an image a container checkpoint (its one layer holds a
checkpoint archive's files), naming the checkpointed container."""


def checkpoint_name(manifest: Manifest) -> str:
    """The checkpointed container's name when the image is a checkpoint ("" otherwise)."""
    for key in CHECKPOINT_NAME_ANNOTATIONS:
        if key in manifest.annotations:
            return manifest.annotations[key] or "(unnamed)"
    return ""


def parse_manifest(body: bytes) -> Manifest:
    data = _loads(body, "image manifest")
    if data.get("schemaVersion") == 1:
        raise DataLoss("Docker schema 1 manifests are not supported")
    raw_layers = data.get("layers") or []
    layers = tuple(_descriptor(raw, "image manifest") for raw in raw_layers)
    urls = tuple(
        tuple(str(u) for u in raw.get("urls") or []) if isinstance(raw, dict) else ()
        for raw in raw_layers
    )
    raw_annotations = data.get("annotations")
    annotations = (
        {str(k): str(v) for k, v in raw_annotations.items()}
        if isinstance(raw_annotations, dict)
        else {}
    )
    return Manifest(_descriptor(data.get("config"), "image manifest"), layers, urls, annotations)


@dataclass(frozen=True)
class ImageConfig:
    """What criproxy needs from the image config; `raw` keeps the whole of it."""

    user: str
    diff_ids: tuple[str, ...]
    raw: dict[str, Any] = field(compare=False)
    os: str = ""
    architecture: str = ""


def parse_config(body: bytes) -> ImageConfig:
    data = _loads(body, "image config")
    rootfs = data.get("rootfs") or {}
    diff_ids = tuple(str(d) for d in rootfs.get("diff_ids") or [])
    config = data.get("config") or {}
    return ImageConfig(
        user=str(config.get("User") or ""),
        diff_ids=diff_ids,
        raw=data,
        os=str(data.get("os", "")),
        architecture=str(data.get("architecture", "")),
    )


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
