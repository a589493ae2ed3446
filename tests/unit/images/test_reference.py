from __future__ import annotations

import pytest

from criproxy.errors import InvalidArgument
from criproxy.images.reference import is_image_id, parse_docker_ref

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app:v1", "docker.io/user/app:v1"),
        ("index.docker.io/user/app", "docker.io/user/app:latest"),
        ("gcr.io/project/app:v1", "gcr.io/project/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("a.b/c__d/e-f.g:T_1.0-x", "a.b/c__d/e-f.g:T_1.0-x"),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert str(parse_docker_ref(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("gcr.io/Project/app", "must be lowercase"),
        ("busybox:", "invalid image reference"),
        ("busy box", "invalid image reference"),
        ("busybox@sha256:abc", "invalid image reference"),
        ("a" * 64, "image id"),
        (DIGEST, "image id"),
        ("x/" + "a" * 300, "longer than 255"),
    ],
)
def test_invalid_references_name_the_reference(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_docker_ref(text)


def test_parts() -> None:
    ref = parse_docker_ref("gcr.io/a/b:v1")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("gcr.io", "a/b", "v1", "")
    assert ref.name == "gcr.io/a/b"
    assert ref.object == "v1"
    assert str(ref.with_digest(DIGEST)) == f"gcr.io/a/b@{DIGEST}"


def test_image_ids() -> None:
    assert is_image_id(DIGEST)
    assert is_image_id("b" * 64)
    assert not is_image_id("busybox")
    assert not is_image_id("sha256:abc")
