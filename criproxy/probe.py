"""`python -m criproxy.probe SOCKET`: exit 0 when a CRI runtime answers Version there."""

from __future__ import annotations

import sys

import grpc

from criproxy._generated.cri.runtime.v1 import api_pb2, api_pb2_grpc


def probe(socket: str, timeout: float = 2.0) -> str:
    """The runtime's name and version; raises grpc.RpcError when nothing answers."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        resp = stub.Version(api_pb2.VersionRequest(), timeout=timeout)
    return f"{resp.runtime_name} {resp.runtime_version}"


if __name__ == "__main__":
    try:
        print(probe(sys.argv[1]))
    except grpc.RpcError as err:
        print(f"no CRI runtime answers on {sys.argv[1]}: {err}", file=sys.stderr)
        sys.exit(1)
