"""Streaming: exec latency and port-forward throughput, criproxy against containerd's CRI.

Both runtimes get the same pod with two busybox containers (one that sleeps, one busybox
httpd serving a `--mb` MiB file) on their own private containerd and pod network
(`bench.pods`'s setup). The client is the same for both, written against the protocols
(`tests/support/streaming_client.py`): an HTTP/1.1 upgrade to SPDY/3.1 and Kubernetes'
remote command v4 or portforward.k8s.io, as kubectl and crictl speak them.

- exec: `--execs` times, alternating, the CRI `Exec` call and a whole session of `true`
  (streams opened, the process run, its status read): what `crictl exec CID true` costs
  besides crictl's own start-up;
- port-forward: `--forwards` times, alternating, the CRI `PortForward` call, then one data
  stream that GETs the file from httpd in the pod; MB/s over the whole transfer.

    .venv/bin/python -m bench.streaming [--execs 30] [--forwards 5] [--mb 64] [--json FILE]
        [--keep]

Needs root, containerd, runc, the CNI plugins and docker-registry.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bench.containers import _image, create_and_start, remove_pod, run_pod
from bench.pods import _leak_checks, _preflight, _start, fmt, ratio
from bench.pull import run_bench
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.logs import configure
from criproxy.streaming.spdy import SpdyConnection
from tests.support.streaming_client import remotecommand, upgrade

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.pods import Runtime

HTTP_PORT = 8099


def _pod(rt: Runtime, image: str, mb: int) -> tuple[str, str]:
    """The pod, its sleeping container and its web server; (pod id, sleeper id)."""
    pod_id, pod, _ = run_pod(rt, "stream", 0)
    sleeper, _, _ = create_and_start(rt, pod_id, pod, image, "sleeper")
    web, _, _ = create_and_start(rt, pod_id, pod, image, "web")
    make = f"mkdir -p /www && head -c {mb * 1024 * 1024} /dev/zero > /www/big"
    rt.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=web, cmd=["sh", "-c", make], timeout=60), timeout=90
    )
    rt.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=web,
            cmd=["sh", "-c", f"httpd -p {HTTP_PORT} -h /www"],
            timeout=10,
        ),
        timeout=30,
    )
    return pod_id, sleeper


def _exec(rt: Runtime, container_id: str) -> float:
    started = time.perf_counter()
    url = rt.runtime.Exec(
        api_pb2.ExecRequest(container_id=container_id, cmd=["true"], stdout=True, stderr=True),
        timeout=30,
    ).url
    result = anyio.run(remotecommand, url)
    seconds = time.perf_counter() - started
    if result.error and result.status.get("status") != "Success":  # none is success too
        raise RuntimeError(f"{rt.name}: exec true did not succeed: {result.error!r}")
    return seconds


async def _get(url: str, size: int) -> int:
    up = await upgrade(url, ("portforward.k8s.io",))
    if up.status != 101:
        raise RuntimeError(f"port-forward upgrade refused: {up.status} {up.body!r}")
    spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
    received = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(spdy.run)
        headers = {"port": str(HTTP_PORT), "requestid": "0"}
        await spdy.open({**headers, "streamtype": "error"})
        data = await spdy.open({**headers, "streamtype": "data"})
        await data.send(b"GET /big HTTP/1.0\r\n\r\n")
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while received < size:
                received += len(await data.receive(1 << 20))
        tg.cancel_scope.cancel()
    await spdy.aclose()
    return received


def _forward(rt: Runtime, pod_id: str, mb: int) -> float:
    """MB/s of one GET of the file through port-forward (the HTTP headers included)."""
    size = mb * 1024 * 1024
    started = time.perf_counter()
    url = rt.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[HTTP_PORT]), timeout=30
    ).url
    received = anyio.run(_get, url, size)
    seconds = time.perf_counter() - started
    if received < size:
        raise RuntimeError(f"{rt.name}: port-forward brought {received} of {size} bytes")
    return received / seconds / 1e6


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        image = _image(base, stack)
        targets: dict[str, tuple[str, str]] = {}
        for rt in runtimes:
            rt.prepull(pause_ref)
            rt.prepull(image)
            targets[rt.name] = _pod(rt, image, args.mb)
        execs: dict[str, list[float]] = {rt.name: [] for rt in runtimes}
        forwards: dict[str, list[float]] = {rt.name: [] for rt in runtimes}
        for rt in runtimes:  # one untimed warm-up each
            _exec(rt, targets[rt.name][1])
        for i in range(args.execs):
            for rt in runtimes if i % 2 == 0 else runtimes[::-1]:
                execs[rt.name].append(_exec(rt, targets[rt.name][1]))
        for i in range(args.forwards):
            for rt in runtimes if i % 2 == 0 else runtimes[::-1]:
                forwards[rt.name].append(_forward(rt, targets[rt.name][0], args.mb))
        for rt in runtimes:
            remove_pod(rt, targets[rt.name][0])
        checks = _leak_checks(runtimes)
    cpx, ctd = runtimes[0].name, runtimes[1].name
    exec_p50 = {name: statistics.median(v) for name, v in execs.items()}
    forward_p50 = {name: statistics.median(v) for name, v in forwards.items()}
    lines = [
        f"exec `true` (Exec + session), n={args.execs}, median ms: "
        f"{cpx} {fmt(exec_p50[cpx] * 1000, '.1f')}, {ctd} {fmt(exec_p50[ctd] * 1000, '.1f')}; "
        f"ratio {cpx}/{ctd} = {fmt(ratio(exec_p50[cpx], exec_p50[ctd]), '.2f')} (goal <= 1.1)",
        f"port-forward of {args.mb} MiB, n={args.forwards}, median MB/s: "
        f"{cpx} {fmt(forward_p50[cpx], '.0f')}, {ctd} {fmt(forward_p50[ctd], '.0f')}; "
        f"ratio {cpx}/{ctd} = {fmt(ratio(forward_p50[cpx], forward_p50[ctd]), '.2f')} "
        "(goal >= 1.0)",
    ]
    for name, cs in checks.items():
        for c in cs:
            lines.append(f"  {name:<11} {c.what:<40} {'ok' if c.ok else 'LEFT: ' + str(c.left)}")
    print("\n".join(lines))
    clean = all(c.ok for cs in checks.values() for c in cs)
    report: dict[str, Any] = {
        "benchmark": "streaming",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "execs": args.execs,
        "forwards": args.forwards,
        "mb": args.mb,
        "exec_seconds": execs,
        "forward_mb_per_s": forwards,
    }
    return report, clean


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streaming", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--execs", type=int, default=30, help="exec sessions per runtime")
    parser.add_argument("--forwards", type=int, default=5, help="port-forward GETs per runtime")
    parser.add_argument("--mb", type=int, default=64, help="size of the forwarded file, MiB")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if min(args.execs, args.forwards, args.mb) < 1:
        parser.error("--execs, --forwards and --mb must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure("warning")  # the client's own SPDY connections log at debug level

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("streaming", args, body)


if __name__ == "__main__":
    sys.exit(main())
