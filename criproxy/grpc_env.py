"""criproxy's gRPC settings, for the process that serves: gRPC reads them from the
environment when it is first imported, so the command sets them before anything imports grpc.
Clients of criproxy (tests, benches) keep gRPC's defaults: a synchronous Python client on
the older polling does not answer a server's GOAWAY while idle, so criproxy's graceful stop
would wait out its grace period for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import MutableMapping

GRPC_EXPERIMENTS_OFF = ("event_engine_client", "event_engine_listener")
"""gRPC's older polling for unix-socket clients and servers, driven by the asyncio poller
thread, costs measurably less CPU per call than its EventEngine thread pool handing every
completion over (grpcio 1.85, as pinned: ~35% less per containerd call one at a time, ~8%
less of criproxy's CPU per pod with ten pods at once; see bench/README.md)."""


def grpc_environment(environ: MutableMapping[str, str]) -> None:
    """criproxy's gRPC settings, kept beside the user's own.

    criproxy forks only to exec (CNI plugins, containerd); gRPC's fork handlers are for fork
    without exec, and with gRPC threads busy they crash the child before its exec.
    """
    environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    current = environ.get("GRPC_EXPERIMENTS", "").strip()
    named = {item.strip().lstrip("-") for item in current.split(",")}
    extra = [f"-{name}" for name in GRPC_EXPERIMENTS_OFF if name not in named]
    if extra:
        environ["GRPC_EXPERIMENTS"] = ",".join([current, *extra] if current else extra)
