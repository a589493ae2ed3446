"""Images: pulls from registries into containerd's content store, unpacking, the image
index kept in memory (`store`), archives (`archive`), and the image filesystem.
`service.ImageService` is what the CRI servicer and the pod and container calls use."""

from criproxy.images.service import ImageService
from criproxy.images.store import Image

__all__ = ["Image", "ImageService"]
