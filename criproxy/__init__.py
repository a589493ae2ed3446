"""criproxy: a Kubernetes CRI v1 runtime endpoint that drives containerd over its own gRPC API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("criproxy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
