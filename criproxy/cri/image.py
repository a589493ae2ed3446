"""runtime.v1.ImageService: validate, call one domain service, build the response.

Calls not built yet answer UNIMPLEMENTED naming the rpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from criproxy.cri.handlers import Context
    from criproxy.images.fsinfo import ImageFilesystem


class ImageServicer:
    """The rpcs of runtime.v1.ImageService built so far; the rest answer UNIMPLEMENTED."""

    def __init__(self, image_fs: ImageFilesystem) -> None:
        self._image_fs = image_fs

    async def ImageFsInfo(  # noqa: N802 (gRPC method names)
        self, request: api_pb2.ImageFsInfoRequest, context: Context
    ) -> api_pb2.ImageFsInfoResponse:
        usage = await self._image_fs.usage()
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
