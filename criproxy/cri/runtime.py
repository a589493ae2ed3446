"""runtime.v1.RuntimeService: validate, call one domain service, build the response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy import __version__
from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from criproxy.cri.handlers import Context
    from criproxy.node import Node

CRI_VERSION = "0.1.0"
"""The kubelet runtime API version string every CRI runtime reports."""
RUNTIME_NAME = "criproxy"
RUNTIME_API_VERSION = "v1"

_CGROUP_DRIVERS = {"systemd": api_pb2.SYSTEMD, "cgroupfs": api_pb2.CGROUPFS}


class RuntimeServicer:
    """The rpcs of runtime.v1.RuntimeService built so far; the rest answer UNIMPLEMENTED."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def Version(  # noqa: N802 (gRPC method names)
        self, request: api_pb2.VersionRequest, context: Context
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(  # noqa: N802
        self, request: api_pb2.StatusRequest, context: Context
    ) -> api_pb2.StatusResponse:
        status = await self._node.status()
        config = self._node.config
        handlers = [api_pb2.RuntimeHandler(name="", features=api_pb2.RuntimeHandlerFeatures())]
        handlers += [
            api_pb2.RuntimeHandler(name=name, features=api_pb2.RuntimeHandlerFeatures())
            for name in sorted(config.runtimes)
        ]
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(
                conditions=[
                    api_pb2.RuntimeCondition(
                        type=c.type, status=c.status, reason=c.reason, message=c.message
                    )
                    for c in status.conditions
                ]
            ),
            info=self._node.verbose_info(status) if request.verbose else {},
            runtime_handlers=handlers,
            features=api_pb2.RuntimeFeatures(),
        )

    async def RuntimeConfig(  # noqa: N802
        self, request: api_pb2.RuntimeConfigRequest, context: Context
    ) -> api_pb2.RuntimeConfigResponse:
        driver = _CGROUP_DRIVERS[self._node.config.cgroup_driver]
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver)
        )

    async def UpdateRuntimeConfig(  # noqa: N802
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Context
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        await self._node.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return api_pb2.UpdateRuntimeConfigResponse()
