"""The CRI v1 servicers: stateless translation between CRI messages and domain services."""

from criproxy.cri.handlers import service_handler
from criproxy.cri.image import ImageServicer
from criproxy.cri.runtime import RuntimeServicer

__all__ = ["ImageServicer", "RuntimeServicer", "service_handler"]
