"""Container lifecycle and listing latency: criproxy against containerd's built-in CRI, in one run.

Both runtimes run the same pods and containers, with the same busybox test image pulled
from a local docker-registry before anything is timed, each on its own private containerd
(same binary, overlayfs, runc) and its own bridge + host-local + portmap network; the
runtimes, networks, pause image and leak checks are `bench.pods`'s. Two phases:

- cycles: `--cycles` times, one after another, RunPodSandbox, CreateContainer (busybox
  sh that exits on SIGTERM), StartContainer, ExecSync `true`, StopContainer (timeout 2,
  the kubelet's path: SIGTERM, which the container honours), RemoveContainer,
  StopPodSandbox, RemovePodSandbox; p50 and p99 of each call and of the cycle (their sum);
- listing: `--containers` running containers spread over `--pods` pods on each runtime, then
  `--calls` ListContainers and ContainerStatus calls and `--stats-calls` ListContainerStats
  calls (one call for all containers), alternating between the runtimes.

criproxy's own log times every CRI call it serves (`duration_ms`); the report puts its
median beside the client's, so the gap is transport and client overhead.

    .venv/bin/python -m bench.containers [--cycles 20] [--containers 100] [--pods 10]
        [--calls 200] [--stats-calls 50] [--json FILE] [--keep]

Needs root, containerd, runc, the CNI plugins and docker-registry (the integration tests'
requirements).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.pods import (
    CALL_TIMEOUT,
    RUN_TIMEOUT,
    Check,
    _CallFailed,
    _leak_checks,
    _preflight,
    _start,
    fmt,
    percentile,
    ratio,
    summary,
)
from bench.pull import BenchError, check_hosts_used, run_bench, tail, write_hosts
from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.support.images import busybox_image
from tests.support.registry import start_registry

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from bench.pods import Runtime, Stats
    from tests.support.registry import Registry

    Row = tuple[str, Stats, Stats, float | None]
    """A table row: label, criproxy's and containerd's statistics, criproxy's server p50."""

IMAGE_REPO = "bench/busybox"
IMAGE_TAG = "1"
SCRIPT = "trap 'exit 0' TERM; sleep 1000 & wait"  # exits 0 on SIGTERM, as well-behaved apps do
STOP_TIMEOUT = 2  # seconds of grace StopContainer gives before SIGKILL
EXEC_TIMEOUT = 10
CYCLE_STEPS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "ExecSync",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
LIST_CALLS = (
    "Version",
    "ListPodSandbox",
    "PodSandboxStatus",
    "ListContainers",
    "ContainerStatus",
    "ListContainerStats",
)
TEARDOWN_CALLS = ("StopPodSandbox", "RemovePodSandbox")


# ---------------------------------------------------------------- calls


def timed(
    rt: Runtime, method: str, request: Any, timeout: float = CALL_TIMEOUT
) -> tuple[Any, float]:
    """One CRI RuntimeService call, timed by the wall clock around the RPC."""
    rpc = getattr(rt.runtime, method)
    return rt._timed(method, lambda: rpc(request, timeout=timeout))


def container_config(
    pod: api_pb2.PodSandboxConfig, image: str, name: str
) -> api_pb2.ContainerConfig:
    """A container as a kubelet sends it: `<name>/0.log` under the pod's log dir (made first)."""
    (Path(pod.log_directory) / name).mkdir(parents=True, exist_ok=True)
    namespaces = pod.linux.security_context.namespace_options
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=image),
        command=["/bin/sh", "-c", SCRIPT],
        log_path=f"{name}/0.log",
        labels={"app": "bench-containers", "container": name},
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(namespace_options=namespaces)
        ),
    )


def run_pod(rt: Runtime, phase: str, index: int) -> tuple[str, api_pb2.PodSandboxConfig, float]:
    """RunPodSandbox (timed), then the untimed ready check that also records its netns."""
    pod = rt.pod_config(phase, index)
    response, seconds = timed(
        rt, "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=pod), RUN_TIMEOUT
    )
    pod_id: str = response.pod_sandbox_id
    rt.live.add(pod_id)
    rt._check_ready(pod_id)
    return pod_id, pod, seconds


def create_and_start(
    rt: Runtime, pod_id: str, pod: api_pb2.PodSandboxConfig, image: str, name: str
) -> tuple[str, float, float]:
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config(pod, image, name), sandbox_config=pod
    )
    response, create = timed(rt, "CreateContainer", request, RUN_TIMEOUT)
    container_id: str = response.container_id
    _, start = timed(rt, "StartContainer", api_pb2.StartContainerRequest(container_id=container_id))
    return container_id, create, start


def remove_pod(rt: Runtime, pod_id: str) -> tuple[float, float]:
    _, stop = timed(rt, "StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    _, remove = timed(
        rt, "RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
    )
    rt.live.discard(pod_id)
    return stop, remove


def cycle(rt: Runtime, image: str, phase: str, index: int) -> dict[str, float] | None:
    """One pod and container lifecycle, each call timed; a failure is recorded and gives None.

    Untimed checks make sure both runtimes did the same work: the pod is ready with an IP,
    ExecSync exits 0, and the stopped container exited 0 (SIGTERM, not the SIGKILL after
    the grace period).
    """
    times: dict[str, float] = {}
    try:
        pod_id, pod, times["RunPodSandbox"] = run_pod(rt, phase, index)
        container_id, times["CreateContainer"], times["StartContainer"] = create_and_start(
            rt, pod_id, pod, image, "app"
        )
        exec_request = api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["true"], timeout=EXEC_TIMEOUT
        )
        response, times["ExecSync"] = timed(rt, "ExecSync", exec_request, EXEC_TIMEOUT + 30)
        if response.exit_code != 0:
            raise _CallFailed("ExecSync", f"`true` exited {response.exit_code}")
        stop_request = api_pb2.StopContainerRequest(container_id=container_id, timeout=STOP_TIMEOUT)
        _, times["StopContainer"] = timed(rt, "StopContainer", stop_request)
        status_request = api_pb2.ContainerStatusRequest(container_id=container_id)
        status = timed(rt, "ContainerStatus", status_request)[0].status
        if status.state != api_pb2.CONTAINER_EXITED or status.exit_code != 0:
            state = api_pb2.ContainerState.Name(status.state)
            raise _CallFailed(
                "StopContainer",
                f"container is {state} with exit code {status.exit_code}, "
                "want CONTAINER_EXITED with 0 (it exits on SIGTERM)",
            )
        remove_request = api_pb2.RemoveContainerRequest(container_id=container_id)
        _, times["RemoveContainer"] = timed(rt, "RemoveContainer", remove_request)
        times["StopPodSandbox"], times["RemovePodSandbox"] = remove_pod(rt, pod_id)
    except _CallFailed as err:
        rt.errors.append(f"{phase} cycle {index}: {err}")
        print(f"{rt.name}: {phase} cycle {index}: {err}", file=sys.stderr)
        return None
    return times


# ---------------------------------------------------------------- criproxy's own timings


def log_offset(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def server_times(log: Path, start: int, end: int) -> dict[str, list[float]]:
    """Seconds per CRI method from criproxy's `cri call` log lines between two offsets."""
    out: dict[str, list[float]] = {}
    with log.open("rb") as f:
        f.seek(start)
        chunk = f.read(end - start)
    for line in chunk.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == "cri call":
                out.setdefault(str(record["method"]), []).append(record["duration_ms"] / 1000)
    return out


def p50(samples: Sequence[float]) -> float | None:
    return percentile(samples, 0.5) if samples else None


# ---------------------------------------------------------------- phases


@dataclass
class Listing:
    """One runtime's running pods and containers for the listing phase, and the samples."""

    rt: Runtime
    pods: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, call: str, seconds: float) -> None:
        self.samples.setdefault(call, []).append(seconds)


def alternate(runtimes: Sequence[Runtime], i: int) -> Iterable[Runtime]:
    """A B, then B A: machine noise and cache effects hit both alike."""
    return runtimes if i % 2 == 0 else reversed(runtimes)


def cycles(runtimes: Sequence[Runtime], image: str, n: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {rt.name: [] for rt in runtimes}
    for i in range(n):
        for rt in alternate(runtimes, i):
            result = cycle(rt, image, "cycle", i)
            if result is not None:
                out[rt.name].append(result)
        if (i + 1) % 5 == 0 or i + 1 == n:
            print(f"cycles: {i + 1}/{n}", file=sys.stderr)
    return out


def populate(listing: Listing, image: str, pods: int, containers: int) -> None:
    """`containers` running containers spread evenly over `pods` pods; untimed."""
    rt = listing.rt
    for p in range(pods):
        pod_id, pod, _ = run_pod(rt, "list", p)
        listing.pods.append(pod_id)
        for c in range(p, containers, pods):
            container_id, _, _ = create_and_start(rt, pod_id, pod, image, f"c{c}")
            listing.containers.append(container_id)
    print(f"listing {rt.name}: {containers} containers in {pods} pods running", file=sys.stderr)


def _check_count(listing: Listing, call: str, count: int) -> None:
    if count != len(listing.containers):
        raise _CallFailed(call, f"{count} containers answered, want {len(listing.containers)}")


def list_calls(
    listings: Sequence[Listing], calls: int, stats_calls: int, *, record: bool = True
) -> None:
    """ListContainers and ContainerStatus `calls` times, ListContainerStats `stats_calls`
    times, alternating between the runtimes; each answer is checked, untimed."""
    by_rt = {listing.rt.name: listing for listing in listings}
    runtimes = [listing.rt for listing in listings]
    rounds = max(calls, stats_calls)
    for i in range(rounds):
        for rt in alternate(runtimes, i):
            listing = by_rt[rt.name]
            add = listing.add if record else (lambda call, seconds: None)
            if i < calls:
                _, seconds = timed(rt, "Version", api_pb2.VersionRequest())
                add("Version", seconds)
                pods, seconds = timed(rt, "ListPodSandbox", api_pb2.ListPodSandboxRequest())
                add("ListPodSandbox", seconds)
                if not set(listing.pods) <= {p.id for p in pods.items}:
                    raise _CallFailed("ListPodSandbox", "a listing pod is missing")
                pod_id = listing.pods[i % len(listing.pods)]
                pod_request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
                status, seconds = timed(rt, "PodSandboxStatus", pod_request)
                add("PodSandboxStatus", seconds)
                if status.status.state != api_pb2.SANDBOX_READY:
                    raise _CallFailed("PodSandboxStatus", f"{pod_id} is not ready")
                response, seconds = timed(rt, "ListContainers", api_pb2.ListContainersRequest())
                add("ListContainers", seconds)
                _check_count(listing, "ListContainers", len(response.containers))
                container_id = listing.containers[i % len(listing.containers)]
                request = api_pb2.ContainerStatusRequest(container_id=container_id)
                response, seconds = timed(rt, "ContainerStatus", request)
                add("ContainerStatus", seconds)
                if response.status.state != api_pb2.CONTAINER_RUNNING:
                    raise _CallFailed("ContainerStatus", f"{container_id} is not running")
            if i < stats_calls:
                stats_request = api_pb2.ListContainerStatsRequest()
                response, seconds = timed(rt, "ListContainerStats", stats_request)
                add("ListContainerStats", seconds)
                _check_count(listing, "ListContainerStats", len(response.stats))
        if record and ((i + 1) % 50 == 0 or i + 1 == rounds):
            print(f"listing: {i + 1}/{rounds} rounds", file=sys.stderr)


def teardown(listing: Listing) -> None:
    """Stop and remove the listing pods (with their running containers); timed for the record."""
    for pod_id in listing.pods:
        stop, remove = remove_pod(listing.rt, pod_id)
        listing.add("StopPodSandbox", stop)
        listing.add("RemovePodSandbox", remove)


# ---------------------------------------------------------------- the benchmark


def _image(base: Path, stack: contextlib.ExitStack) -> str:
    """The busybox test image in a second local registry that both runtimes' hosts.toml know.

    bench.pods's setup keeps its registry to itself, so the image gets a registry of its own.
    """
    registry: Registry = start_registry(base / "registry-images")
    stack.callback(registry.stop)
    registry.push(IMAGE_REPO, busybox_image(), IMAGE_TAG)
    write_hosts(base / "certs.d", registry)
    return registry.reference(IMAGE_REPO, IMAGE_TAG)


def _cycle_stats(samples: list[dict[str, float]]) -> dict[str, Stats]:
    out = {step: summary([s[step] for s in samples]) for step in CYCLE_STEPS}
    out["cycle"] = summary([sum(s.values()) for s in samples])
    return out


def _table(title: str, rows: Sequence[Row]) -> list[str]:
    lines = [
        title,
        f"{'call':<40}{'n':>4}{'criproxy p50':>14}{'p99':>8}{'containerd p50':>16}{'p99':>8}"
        f"{'ratio p50':>11}{'p99':>6}{'cpx server p50':>16}",
    ]
    for label, cpx, ctd, server in rows:
        lines.append(
            f"{label:<40}{cpx['n']:>4}{fmt(ms(cpx['p50']), '.1f'):>14}"
            f"{fmt(ms(cpx['p99']), '.1f'):>8}{fmt(ms(ctd['p50']), '.1f'):>16}"
            f"{fmt(ms(ctd['p99']), '.1f'):>8}{fmt(ratio(cpx['p50'], ctd['p50']), '.2f'):>11}"
            f"{fmt(ratio(cpx['p99'], ctd['p99']), '.2f'):>6}{fmt(ms(server), '.1f'):>16}"
        )
    return lines


def ms(seconds: object) -> float | None:
    return seconds * 1000 if isinstance(seconds, float) else None


def _measure(
    args: argparse.Namespace, runtimes: Sequence[Runtime], image: str, cpx_log: Path
) -> dict[str, Any]:
    for rt in runtimes:  # warm-up: imports, connections, CNI, page cache; not counted
        if cycle(rt, image, "warmup", 0) is None:
            raise BenchError(
                f"{rt.name}: the warm-up cycle failed: {rt.errors[-1]}\n{tail(rt.log)}"
            )

    start = log_offset(cpx_log)
    samples = cycles(runtimes, image, args.cycles)
    cycle_server = server_times(cpx_log, start, log_offset(cpx_log))
    cycle_stats = {name: _cycle_stats(s) for name, s in samples.items()}

    listings = [Listing(rt) for rt in runtimes]
    try:
        for listing in listings:
            populate(listing, image, args.pods, args.containers)
        list_calls(listings, 5, 5, record=False)  # warm-up, not counted
        start = log_offset(cpx_log)
        list_calls(listings, args.calls, args.stats_calls)
        list_server = server_times(cpx_log, start, log_offset(cpx_log))
        start = log_offset(cpx_log)
        for listing in listings:
            teardown(listing)
        teardown_server = server_times(cpx_log, start, log_offset(cpx_log))
    except _CallFailed as err:
        raise BenchError(f"listing phase: {err}") from err
    list_stats = {
        listing.rt.name: {call: summary(s) for call, s in listing.samples.items()}
        for listing in listings
    }
    return {
        "cycles": cycle_stats,
        "cycles_server_p50": {m: p50(s) for m, s in cycle_server.items()},
        "listing": list_stats,
        "listing_server_p50": {m: p50(s) for m, s in list_server.items()},
        "teardown_server_p50": {m: p50(s) for m, s in teardown_server.items()},
    }


def _report(
    args: argparse.Namespace,
    versions: dict[str, str],
    r: dict[str, Any],
    checks: dict[str, list[Check]],
) -> list[str]:
    cpx, ctd = r["cycles"]["criproxy"], r["cycles"]["containerd"]
    cycle_rows: list[Row] = [
        (step, cpx[step], ctd[step], r["cycles_server_p50"].get(step)) for step in CYCLE_STEPS
    ]
    cycle_rows.append(("whole cycle (sum of the calls)", cpx["cycle"], ctd["cycle"], None))
    lcpx, lctd = r["listing"]["criproxy"], r["listing"]["containerd"]
    per_pod = args.containers // args.pods
    list_rows: list[Row] = [
        (
            f"{call}" if call != "ListContainerStats" else "ListContainerStats (all)",
            lcpx[call],
            lctd[call],
            r["listing_server_p50"].get(call),
        )
        for call in LIST_CALLS
    ]
    list_rows += [
        (
            f"{call} (pod of ~{per_pod} running)",
            lcpx[call],
            lctd[call],
            r["teardown_server_p50"].get(call),
        )
        for call in TEARDOWN_CALLS
    ]
    lines = [
        "",
        f"Containers: {args.cycles} cycles per runtime, alternating, after one warm-up each; "
        "busybox test image pre-pulled from a local registry; bridge + host-local + portmap CNI",
        *(f"  {name}: {version}" for name, version in versions.items()),
        "",
        *_table(
            "cycle, one at a time; ms (ratio = criproxy/containerd, < 1: criproxy faster):",
            cycle_rows,
        ),
        "",
        *_table(
            f"listing, {args.containers} running containers in {args.pods} pods per runtime; "
            f"{args.calls} of each but ListContainerStats, "
            f"{args.stats_calls} ListContainerStats; ms:",
            list_rows,
        ),
    ]
    for name, errors in r["errors"].items():
        if errors:
            lines.append(f"\n{name}: {len(errors)} failed cycles, first: {errors[0]}")
    lines.append("\nleak checks after the run:")
    for name, cs in checks.items():
        for c in cs:
            state = "ok" if c.ok else f"LEFT {len(c.left)}: {', '.join(c.left[:3])}"
            note = f"  ({c.note})" if c.note else ""
            lines.append(f"  {name:<12}{c.what:<40}{state}{note}")
    return lines


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    """Start everything, measure, check for leaks, report; returns (report, all clean)."""
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        image = _image(base, stack)
        versions = {rt.name: rt.describe() for rt in runtimes}
        for rt in runtimes:
            print(f"{rt.name}: {versions[rt.name]}", file=sys.stderr)
            rt.prepull(pause_ref)
            rt.prepull(image)
        check_hosts_used(runtimes[1].log)
        results = _measure(args, runtimes, image, runtimes[0].log)
        results["errors"] = {rt.name: list(rt.errors) for rt in runtimes}
        checks = _leak_checks(runtimes)

    print("\n".join(_report(args, versions, results, checks)))
    clean = all(c.ok for cs in checks.values() for c in cs) and not any(results["errors"].values())
    report: dict[str, object] = {
        "benchmark": "containers",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "cycles": args.cycles,
        "containers": args.containers,
        "pods": args.pods,
        "calls": args.calls,
        "stats_calls": args.stats_calls,
        "image": image,
        "pause_image": pause_ref,
        "versions": versions,
        "order": "warm-up A B; cycles alternate A B / B A; listing calls alternate A B / B A",
        "seconds": results,
        "leak_checks": {
            name: [{"what": c.what, "ok": c.ok, "left": c.left, "note": c.note} for c in cs]
            for name, cs in checks.items()
        },
    }
    return report, clean


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.containers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=20, help="lifecycles per runtime")
    parser.add_argument("--containers", type=int, default=100, help="running, listing phase")
    parser.add_argument("--pods", type=int, default=10, help="pods they are spread over")
    parser.add_argument("--calls", type=int, default=200, help="ListContainers/ContainerStatus")
    parser.add_argument("--stats-calls", type=int, default=50, help="ListContainerStats calls")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if min(args.cycles, args.pods, args.calls, args.stats_calls) < 1:
        parser.error("--cycles, --pods, --calls and --stats-calls must be >= 1")
    if args.containers < args.pods:
        parser.error("--containers must be >= --pods")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("containers", args, body)


if __name__ == "__main__":
    sys.exit(main())
