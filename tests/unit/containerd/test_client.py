"""The containerd client against an in-process gRPC server speaking containerd's wire API.

This is the unit level: a stand-in server lets the tests see exactly which metadata arrives
and force each error code. Integration tests use a real containerd.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2

from criproxy import errors
from criproxy._generated.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from criproxy.containerd import Containerd

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeVersion(version_pb2_grpc.VersionServicer):
    def __init__(self) -> None:
        self.namespaces: list[str | None] = []
        self.fail_with: grpc.StatusCode | None = None

    async def Version(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> version_pb2.VersionResponse:
        md = dict(context.invocation_metadata() or ())
        self.namespaces.append(md.get("containerd-namespace"))  # type: ignore[arg-type]
        if self.fail_with is not None:
            await context.abort(self.fail_with, "forced failure")
        return version_pb2.VersionResponse(version="1.6.99", revision="abc")


class Server:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.fake = FakeVersion()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        version_pb2_grpc.add_VersionServicer_to_server(self.fake, self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        await self.server.start()

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(None)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    with tempfile.TemporaryDirectory(prefix="cpx-") as tmp:
        srv = Server(Path(tmp) / "c.sock")
        await srv.start()
        yield srv
        await srv.stop()


async def test_every_call_carries_the_namespace_header(server: Server) -> None:
    client = Containerd(str(server.socket), "k8s.io")
    try:
        version = await client.version(timeout=5)
    finally:
        await client.close()
    assert (version.version, version.revision) == ("1.6.99", "abc")
    assert server.fake.namespaces == ["k8s.io"]


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.UNKNOWN, errors.Internal),
    ],
)
async def test_server_errors_become_project_errors(
    server: Server, code: grpc.StatusCode, cls: type[errors.CriproxyError]
) -> None:
    server.fake.fail_with = code
    client = Containerd(str(server.socket), "k8s.io")
    try:
        with pytest.raises(cls, match="forced failure"):
            await client.version(timeout=5)
    finally:
        await client.close()


async def test_unavailable_while_down_then_works_when_back() -> None:
    with tempfile.TemporaryDirectory(prefix="cpx-") as tmp:
        srv = Server(Path(tmp) / "c.sock")
        client = Containerd(str(srv.socket), "default")
        try:
            with pytest.raises(errors.Unavailable, match="containerd is unavailable"):
                await client.version(timeout=2)
            assert not await client.ping(timeout=0.5)
            await srv.start()
            with anyio.fail_after(10):
                while not await client.ping(timeout=1):  # noqa: ASYNC110 (polling a server)
                    await anyio.sleep(0.05)
            assert (await client.version(timeout=2)).version == "1.6.99"
            await srv.stop()
            with pytest.raises(errors.Unavailable):
                await client.version(timeout=2)
        finally:
            await client.close()
