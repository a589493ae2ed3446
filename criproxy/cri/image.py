"""runtime.v1.ImageService: validate, call the image service, build the response."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.image import to_cri_image
from criproxy.errors import InvalidArgument
from criproxy.images.auth import Credentials

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from criproxy.cri.handlers import Context
    from criproxy.images.service import ImageService


def _required_image(spec: api_pb2.ImageSpec, field: str = "image.image") -> str:
    if not spec.image:
        raise InvalidArgument(f"{field} is required")
    return spec.image


class ImageServicer:
    """The rpcs of runtime.v1.ImageService."""

    def __init__(self, images: ImageService) -> None:
        self._images = images

    async def PullImage(  # noqa: N802 (gRPC method names)
        self, request: api_pb2.PullImageRequest, context: Context
    ) -> api_pb2.PullImageResponse:
        image = _required_image(request.image)
        credentials = None
        if request.HasField("auth"):
            auth = request.auth
            credentials = Credentials.from_auth_config(
                username=auth.username,
                password=auth.password,
                auth=auth.auth,
                identity_token=auth.identity_token,
                registry_token=auth.registry_token,
                server_address=auth.server_address,
            )
        pulled = await self._images.pull(image, credentials)
        return api_pb2.PullImageResponse(image_ref=pulled.id)

    async def ImageStatus(  # noqa: N802
        self, request: api_pb2.ImageStatusRequest, context: Context
    ) -> api_pb2.ImageStatusResponse:
        image = self._images.status(_required_image(request.image))
        if image is None:
            return api_pb2.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {"chainID": image.content.chain_id, "imageSpec": image.content.config.raw}
            )
        return api_pb2.ImageStatusResponse(image=to_cri_image(image), info=info)

    async def ListImages(  # noqa: N802
        self, request: api_pb2.ListImagesRequest, context: Context
    ) -> api_pb2.ListImagesResponse:
        images = self._images.list(request.filter.image.image)
        return api_pb2.ListImagesResponse(images=[to_cri_image(i) for i in images])

    async def StreamImages(  # noqa: N802
        self, request: api_pb2.StreamImagesRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamImagesResponse]:
        images = self._images.list(request.filter.image.image)
        batch = 256  # keep each message well under gRPC's size limit
        for start in range(0, max(len(images), 1), batch):
            yield api_pb2.StreamImagesResponse(
                images=[to_cri_image(i) for i in images[start : start + batch]]
            )

    async def RemoveImage(  # noqa: N802
        self, request: api_pb2.RemoveImageRequest, context: Context
    ) -> api_pb2.RemoveImageResponse:
        await self._images.remove(_required_image(request.image))
        return api_pb2.RemoveImageResponse()

    async def ImageFsInfo(  # noqa: N802
        self, request: api_pb2.ImageFsInfoRequest, context: Context
    ) -> api_pb2.ImageFsInfoResponse:
        usage = await self._images.fs_usage()
        return api_pb2.ImageFsInfoResponse(
            image_filesystems=[
                api_pb2.FilesystemUsage(
                    timestamp=usage.timestamp_ns,
                    fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
                    used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
                    inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
                )
            ]
        )
