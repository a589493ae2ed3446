from __future__ import annotations

import hashlib
import json

import pytest

from criproxy.errors import DataLoss, NotFound
from criproxy.images.manifest import (
    Platform,
    chain_ids,
    checkpoint_name,
    is_non_distributable,
    parse_config,
    parse_index,
    parse_manifest,
    platform_matches,
    select_manifest,
)

AMD64 = Platform("linux", "amd64")


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{i:064x}",
                    "size": 10,
                    "platform": p,
                }
                for i, p in enumerate(platforms)
            ]
        }
    ).encode()


def test_the_host_platform_is_selected() -> None:
    entries = parse_index(
        _index(
            {"os": "linux", "architecture": "arm64", "variant": "v8"},
            {"os": "windows", "architecture": "amd64"},
            {"os": "linux", "architecture": "amd64"},
        )
    )
    assert select_manifest(entries, AMD64).digest == f"sha256:{2:064x}"


def test_no_match_names_what_the_index_has() -> None:
    entries = parse_index(_index({"os": "linux", "architecture": "arm64", "variant": "v8"}))
    with pytest.raises(NotFound, match="linux/arm64/v8"):
        select_manifest(entries, AMD64)


@pytest.mark.parametrize(
    ("want", "have", "ok"),
    [
        (AMD64, ("linux", "amd64", ""), True),
        (AMD64, ("linux", "amd64", "v1"), True),
        (AMD64, ("linux", "amd64", "v3"), False),
        (Platform("linux", "arm64", "v8"), ("linux", "arm64", ""), True),
        (Platform("linux", "arm", "v7"), ("linux", "arm", "v6"), True),
        (Platform("linux", "arm", "v6"), ("linux", "arm", "v7"), False),
        (AMD64, ("windows", "amd64", ""), False),
    ],
)
def test_platform_matching(want: Platform, have: tuple[str, str, str], ok: bool) -> None:
    assert platform_matches(want, *have) is ok


def test_manifest_and_config() -> None:
    manifest = parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "c", "digest": "sha256:" + "c" * 64, "size": 3},
                "layers": [
                    {"mediaType": "l", "digest": "sha256:" + "1" * 64, "size": 5},
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                        "digest": "sha256:" + "2" * 64,
                        "size": 6,
                        "urls": ["https://example.com/layer"],
                    },
                ],
            }
        ).encode()
    )
    assert manifest.config.size == 3
    assert [d.size for d in manifest.layers] == [5, 6]
    assert manifest.layer_urls == ((), ("https://example.com/layer",))
    assert is_non_distributable(manifest.layers[1].media_type)
    config = parse_config(
        json.dumps({"config": {"User": "1000:1000"}, "rootfs": {"diff_ids": ["sha256:x"]}}).encode()
    )
    assert config.user == "1000:1000"
    assert config.diff_ids == ("sha256:x",)


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"schemaVersion": 1}', b'{"config": {}}'])
def test_broken_manifests_are_data_loss(body: bytes) -> None:
    with pytest.raises(DataLoss):
        parse_manifest(body)


def test_chain_ids_follow_the_oci_spec() -> None:
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


@pytest.mark.parametrize(
    ("annotations", "name"),
    [
        ({"io.kubernetes.cri-o.annotations.checkpoint.name": "counter"}, "counter"),
        ({"checkpointctl.annotation.checkpoint.name": "web"}, "web"),
        ({"checkpointctl.annotation.checkpoint.name": ""}, "(unnamed)"),
        ({"org.opencontainers.image.title": "counter"}, ""),
        (None, ""),
    ],
)
def test_a_checkpoint_image_is_known_by_its_manifest_annotation(
    annotations: dict[str, str] | None, name: str
) -> None:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": "c", "digest": "sha256:" + "c" * 64, "size": 3},
        "layers": [],
    }
    if annotations is not None:
        doc["annotations"] = annotations
    manifest = parse_manifest(json.dumps(doc).encode())
    assert manifest.annotations == (annotations or {})
    assert checkpoint_name(manifest) == name
