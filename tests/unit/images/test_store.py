from __future__ import annotations

from criproxy.containerd.types import Descriptor
from criproxy.images.manifest import ImageConfig
from criproxy.images.store import ImageContent, ImageStore

ID1 = "sha256:" + "1" * 64
ID2 = "sha256:" + "12" * 32


def content(image_id: str) -> ImageContent:
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "f" * 64, 1)
    return ImageContent(image_id, target, target.digest, ImageConfig("", (), {}), 10, "")


def test_references_group_by_image_and_resolve_every_way() -> None:
    store = ImageStore(pinned_refs=frozenset({"registry.k8s.io/pause:3.10"}))
    store.add("docker.io/library/busybox:latest", content(ID1))
    store.add("docker.io/library/busybox@sha256:" + "f" * 64, content(ID1))
    store.add(ID1, content(ID1))
    store.add("registry.k8s.io/pause:3.10", content(ID2))
    (image1, image2) = store.list()
    assert image1.repo_tags == ["docker.io/library/busybox:latest"]
    assert image1.repo_digests == ["docker.io/library/busybox@sha256:" + "f" * 64]
    assert not image1.pinned and image2.pinned
    for key in ("busybox", "docker.io/library/busybox:latest", ID1, "1" * 64):
        found = store.resolve(key)
        assert found is not None and found.id == ID1, key
    assert store.resolve("1") is None  # ambiguous short id: both ids start with 1
    assert store.resolve("1111") is not None
    assert store.resolve("nothing") is None


def test_a_tag_moving_to_a_new_image_leaves_the_old_one_without_it() -> None:
    store = ImageStore()
    store.add("docker.io/library/app:v1", content(ID1))
    store.add(ID1, content(ID1))
    store.add("docker.io/library/app:v1", content(ID2))
    old = store.get(ID1)
    assert old is not None and old.repo_tags == []
    store.remove_reference(ID1)
    assert store.get(ID1) is None
    assert store.resolve("app:v1") is not None
