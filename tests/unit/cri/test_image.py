"""runtime.v1.ImageService: its refusals, and images as CRI shows them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containerd.types import Descriptor
from criproxy.cri.convert.image import to_cri_image
from criproxy.cri.image import ImageServicer
from criproxy.errors import InvalidArgument
from criproxy.images.auth import Credentials
from criproxy.images.fsinfo import FilesystemUsage
from criproxy.images.manifest import ImageConfig
from criproxy.images.store import Image, ImageContent

pytestmark = pytest.mark.anyio

ID = "sha256:" + "a" * 64
DIGEST = "sha256:" + "b" * 64


def _image(user: str = "", *, pinned: bool = False, image_id: str = ID) -> Image:
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 500)
    config = ImageConfig(user, ("sha256:" + "c" * 64,), {"config": {"User": user}})
    content = ImageContent(image_id, target, DIGEST, config, 4096, "sha256:" + "d" * 64)
    references = (
        "docker.io/library/busybox:1.36",
        "docker.io/library/busybox:latest",
        f"docker.io/library/busybox@{DIGEST}",
        image_id,
    )
    return Image(content, references, pinned)


class FakeImages:
    """The image service as the servicer uses it; records what it was asked."""

    def __init__(self, images: list[Image]) -> None:
        self.images = images
        self.calls: list[tuple[str, Any]] = []

    async def pull(self, image: str, credentials: Credentials | None = None) -> Image:
        self.calls.append(("pull", (image, credentials)))
        return self.images[0]

    def status(self, ref_or_id: str) -> Image | None:
        self.calls.append(("status", ref_or_id))
        return next((i for i in self.images if ref_or_id in i.references), None)

    def list(self, ref_or_id: str = "") -> list[Image]:
        self.calls.append(("list", ref_or_id))
        return self.images

    async def remove(self, ref_or_id: str) -> None:
        self.calls.append(("remove", ref_or_id))

    async def fs_usage(self) -> FilesystemUsage:
        return FilesystemUsage(1234, "/var/lib/containerd/snapshots", 4096, 12)


def _servicer(*images: Image) -> tuple[ImageServicer, FakeImages]:
    fake = FakeImages(list(images))
    return ImageServicer(fake), fake


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("PullImage", api_pb2.PullImageRequest()),
        ("PullImage", api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=""))),
        ("ImageStatus", api_pb2.ImageStatusRequest()),
        ("RemoveImage", api_pb2.RemoveImageRequest()),
    ],
)
async def test_an_image_is_required(method: str, request_: Any) -> None:
    servicer, fake = _servicer(_image())
    with pytest.raises(InvalidArgument, match=r"^image\.image is required$"):
        await getattr(servicer, method)(request_, None)
    assert fake.calls == []


async def test_auth_that_is_not_base64_user_password_is_refused() -> None:
    servicer, fake = _servicer(_image())
    request = api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image="busybox"),
        auth=api_pb2.AuthConfig(auth=base64.b64encode(b"no-colon").decode()),
    )
    with pytest.raises(InvalidArgument, match=r"^auth\.auth is not base64 of 'user:password'$"):
        await servicer.PullImage(request, None)
    assert fake.calls == []


# --- calls ------------------------------------------------------------------------------


async def test_pull_without_auth_passes_no_credentials() -> None:
    servicer, fake = _servicer(_image())
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="busybox:1.36"))
    response = await servicer.PullImage(request, None)
    assert response == api_pb2.PullImageResponse(image_ref=ID)
    assert fake.calls == [("pull", ("busybox:1.36", None))]


async def test_pull_passes_the_auth_config_on() -> None:
    servicer, fake = _servicer(_image())
    request = api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image="registry.example/app:1"),
        auth=api_pb2.AuthConfig(
            auth=base64.b64encode(b"user:pa:ss").decode(),
            identity_token="id",
            registry_token="reg",
            server_address="registry.example",
        ),
    )
    await servicer.PullImage(request, None)
    assert fake.calls == [
        (
            "pull",
            (
                "registry.example/app:1",
                Credentials("user", "pa:ss", "id", "reg", "registry.example"),
            ),
        )
    ]


async def test_status_of_an_unknown_image_is_empty() -> None:
    servicer, _ = _servicer(_image())
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="nginx"), verbose=True)
    assert await servicer.ImageStatus(request, None) == api_pb2.ImageStatusResponse()


async def test_status_verbose_info_has_the_chain_id_and_image_spec() -> None:
    servicer, _ = _servicer(_image("1000"))
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ID), verbose=True)
    response = await servicer.ImageStatus(request, None)
    assert response.image == to_cri_image(_image("1000"))
    assert json.loads(response.info["info"]) == {
        "chainID": "sha256:" + "d" * 64,
        "imageSpec": {"config": {"User": "1000"}},
    }
    quiet = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ID))
    assert dict((await servicer.ImageStatus(quiet, None)).info) == {}


async def test_list_passes_the_filter_on() -> None:
    servicer, fake = _servicer(_image(), _image(image_id="sha256:" + "e" * 64))
    request = api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="busybox"))
    )
    response = await servicer.ListImages(request, None)
    assert [i.id for i in response.images] == [ID, "sha256:" + "e" * 64]
    assert fake.calls == [("list", "busybox")]


@pytest.mark.parametrize(("count", "pages"), [(0, [0]), (1, [1]), (256, [256]), (300, [256, 44])])
async def test_stream_images_pages_at_256_and_answers_at_least_once(
    count: int, pages: list[int]
) -> None:
    images = [_image(image_id=f"sha256:{i:064x}") for i in range(count)]
    servicer, _ = _servicer(*images)
    responses = [r async for r in servicer.StreamImages(api_pb2.StreamImagesRequest(), None)]
    assert [len(r.images) for r in responses] == pages


async def test_remove_passes_the_name_on() -> None:
    servicer, fake = _servicer()
    request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image="busybox"))
    assert await servicer.RemoveImage(request, None) == api_pb2.RemoveImageResponse()
    assert fake.calls == [("remove", "busybox")]


async def test_image_fs_info() -> None:
    servicer, _ = _servicer()
    response = await servicer.ImageFsInfo(api_pb2.ImageFsInfoRequest(), None)
    assert response == api_pb2.ImageFsInfoResponse(
        image_filesystems=[
            api_pb2.FilesystemUsage(
                timestamp=1234,
                fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var/lib/containerd/snapshots"),
                used_bytes=api_pb2.UInt64Value(value=4096),
                inodes_used=api_pb2.UInt64Value(value=12),
            )
        ]
    )


# --- the image as CRI shows it ----------------------------------------------------------


def test_to_cri_image() -> None:
    assert to_cri_image(_image(pinned=True)) == api_pb2.Image(
        id=ID,
        repo_tags=["docker.io/library/busybox:1.36", "docker.io/library/busybox:latest"],
        repo_digests=[f"docker.io/library/busybox@{DIGEST}"],
        size=4096,
        pinned=True,
    )


@pytest.mark.parametrize(
    ("user", "uid", "username"),
    [
        ("", None, ""),
        ("0", 0, ""),
        ("1000", 1000, ""),
        ("1000:1000", 1000, ""),
        ("nobody", None, "nobody"),
        ("nobody:nogroup", None, "nobody"),
        ("www-data:33", None, "www-data"),
    ],
)
def test_the_image_user_is_a_uid_or_else_a_name(user: str, uid: int | None, username: str) -> None:
    image = to_cri_image(_image(user))
    assert (image.uid.value if image.HasField("uid") else None) == uid
    assert image.username == username
