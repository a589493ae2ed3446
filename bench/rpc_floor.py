"""The floor under every criproxy call: what one unary call to an empty handler costs in
each server model grpcio offers Python, timed by the same Python client the other
benchmarks use, on a unix socket as the kubelet's.

- `aio`: `grpc.aio` on an asyncio loop, as criproxy serves (its handlers are async);
- `threaded`: grpc's thread-pool server, handlers on worker threads.

The handler returns an empty response without touching anything, so the figure is
grpcio's own per-call cost (both sides) plus the client's. Compare it with containerd's
CRI `Version` (`bench.containers`, listing table): a trivial call cannot be faster than
its floor, whatever criproxy does.

    .venv/bin/python -m bench.rpc_floor [--calls 3000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_SERVICE, _METHOD = "bench.Floor", "Empty"
_WARM_UP = 300


def _handlers(behaviour: Callable[..., Any]) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=None, response_serializer=None
    )
    return grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: method})


def _client(address: str, calls: int) -> list[float]:
    """Seconds per call, after a warm-up."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/{_SERVICE}/{_METHOD}", request_serializer=None, response_deserializer=None
        )
        for _ in range(_WARM_UP):
            call(b"")
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call(b"")
            samples.append(time.perf_counter() - started)
    return samples


def threaded(address: str, calls: int) -> list[float]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handlers(lambda request, context: b""),))
    server.add_insecure_port(address)
    server.start()
    try:
        return _client(address, calls)
    finally:
        server.stop(0)


def aio(address: str, calls: int) -> list[float]:
    async def empty(request: bytes, context: Any) -> bytes:
        return b""

    async def main() -> list[float]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handlers(empty),))
        server.add_insecure_port(address)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _client, address, calls)
        finally:
            await server.stop(0)

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rpc_floor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per model")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="criproxy-bench-rpc-") as work:
        for name, model in (("aio", aio), ("threaded", threaded), ("aio again", aio)):
            samples = model(f"unix://{work}/{name.replace(' ', '-')}.sock", args.calls)
            ordered = sorted(samples)
            results[name] = {
                "p50_ms": statistics.median(samples) * 1000,
                "p90_ms": ordered[int(len(ordered) * 0.9)] * 1000,
            }
            print(
                f"{name:<10} empty unary call, n={args.calls}: "
                f"p50 {results[name]['p50_ms']:.3f} ms, p90 {results[name]['p90_ms']:.3f} ms"
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "rpc_floor", **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
