"""Many pods at once, as a kubelet starts them: criproxy against containerd's built-in CRI.

What a node does when `--pods` static pods appear together (a kubelet's pod workers run
them all at once) and later go: every pod's worker calls RunPodSandbox, PodSandboxStatus,
ImageStatus, CreateContainer, StartContainer and ContainerStatus, while a PLEG-like relist
runs every second (ListPodSandbox and ListContainers, then, for each pod that changed,
PodSandboxStatus, ListContainers of that pod and ContainerStatus of each container, as the
kubelet's generic PLEG does). The start phase ends when every container is RUNNING; the
teardown phase (StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox per pod,
all pods at once, with the relist still running) when every pod is gone. Runs alternate
between the runtimes. This stands in for a real kubelet where none can be built (its source
is too large to fetch here); the call sequence is the kubelet's, its timers are not.

    .venv/bin/python -m bench.burst [--pods 30] [--runs 5] [--json FILE] [--keep]

Needs root, containerd, runc, the CNI plugins and docker-registry (the integration tests'
requirements).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from bench.containers import STOP_TIMEOUT, _image, container_config
from bench.pods import (
    CALL_TIMEOUT,
    RUN_TIMEOUT,
    _busy_cpu_s,
    _leak_checks,
    _own_cpu_s,
    _preflight,
    _start,
)
from bench.pull import BenchError, check_hosts_used, cpu_seconds, run_bench
from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.pods import Runtime

RELIST_PERIOD = 1.0


class Relister:
    """The kubelet's generic PLEG, as far as the runtime sees it: a relist every period,
    then the status of every pod whose containers or sandbox changed."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop = threading.Event()
        self.calls = 0
        self._seen: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Relister:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self.stop.wait(RELIST_PERIOD):
            with contextlib.suppress(grpc.RpcError):
                self.relist()

    def relist(self) -> None:
        rt = self.rt.runtime
        pods = rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items
        containers = rt.ListContainers(api_pb2.ListContainersRequest(), timeout=CALL_TIMEOUT)
        self.calls += 2
        by_pod: dict[str, list[tuple[str, int]]] = {}
        for c in containers.containers:
            by_pod.setdefault(c.pod_sandbox_id, []).append((c.id, c.state))
        for pod in pods:
            state = (pod.state, tuple(sorted(by_pod.get(pod.id, []))))
            if self._seen.get(pod.id) == state:
                continue
            self._seen[pod.id] = state
            rt.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
            )
            flt = api_pb2.ContainerFilter(pod_sandbox_id=pod.id)
            listed = rt.ListContainers(
                api_pb2.ListContainersRequest(filter=flt), timeout=CALL_TIMEOUT
            ).containers
            for c in listed:
                rt.ContainerStatus(
                    api_pb2.ContainerStatusRequest(container_id=c.id), timeout=CALL_TIMEOUT
                )
            self.calls += 2 + len(listed)


def start_pod(rt: Runtime, image: str, run: int, index: int) -> tuple[str, str]:
    """One pod worker's start: sandbox, its status, the image, the container, its status."""
    api = rt.runtime
    pod = rt.pod_config(f"burst{run}", index)
    pod_id = api.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod), timeout=RUN_TIMEOUT
    ).pod_sandbox_id
    rt.live.add(pod_id)
    api.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=60)
    rt.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)), timeout=CALL_TIMEOUT
    )
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config(pod, image, "app"), sandbox_config=pod
    )
    container_id = api.CreateContainer(request, timeout=RUN_TIMEOUT).container_id
    api.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=60)
    status = api.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id), timeout=CALL_TIMEOUT
    ).status
    if status.state != api_pb2.CONTAINER_RUNNING:
        raise BenchError(f"{rt.name}: container {container_id} is {status.state} after start")
    return pod_id, container_id


def stop_pod(rt: Runtime, pod_id: str, container_id: str) -> None:
    """One pod worker's teardown: kill the pod, then the garbage collection's removals."""
    api = rt.runtime
    api.StopContainer(
        api_pb2.StopContainerRequest(container_id=container_id, timeout=STOP_TIMEOUT),
        timeout=CALL_TIMEOUT,
    )
    api.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    api.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id), timeout=60)
    api.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    rt.live.discard(pod_id)


def burst(rt: Runtime, image: str, pods: int, run: int) -> dict[str, float]:
    """Start `pods` pods at once and tear them down at once; seconds and CPU of each phase."""
    with Relister(rt) as relister, ThreadPoolExecutor(pods) as pool:
        each0 = [cpu_seconds((pid,)) for pid in rt.pids]
        busy0, cpu0, t0 = _busy_cpu_s(), _own_cpu_s(rt.pids), time.perf_counter()
        started = list(pool.map(lambda i: start_pod(rt, image, run, i), range(pods)))
        up, cpu1, busy1 = time.perf_counter() - t0, _own_cpu_s(rt.pids), _busy_cpu_s()
        each = [cpu_seconds((pid,)) - c for pid, c in zip(rt.pids, each0, strict=True)]
        t1 = time.perf_counter()
        list(pool.map(lambda p: stop_pod(rt, *p), started))
        down, cpu2, busy2 = time.perf_counter() - t1, _own_cpu_s(rt.pids), _busy_cpu_s()
        each2 = [cpu_seconds((pid,)) - c for pid, c in zip(rt.pids, each0, strict=True)]
    left = rt.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
    if left.items:
        raise BenchError(f"{rt.name}: {len(left.items)} pods left after the teardown")
    return {
        "start_s": up,
        "teardown_s": down,
        "start_cpu_s": cpu1 - cpu0,
        "teardown_cpu_s": cpu2 - cpu1,
        "relist_calls": float(relister.calls),
        "start_cpu_own_process_s": each[0],
        "teardown_cpu_own_process_s": each2[0] - each[0],
        "start_machine_cpu_s": busy1 - busy0,
        "teardown_machine_cpu_s": busy2 - busy1,
    }


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        image = _image(base, stack)
        versions = {rt.name: rt.describe() for rt in runtimes}
        for rt in runtimes:
            print(f"{rt.name}: {versions[rt.name]}", file=sys.stderr)
            rt.prepull(pause_ref)
            rt.prepull(image)
        check_hosts_used(runtimes[1].log)
        samples: dict[str, list[dict[str, float]]] = {rt.name: [] for rt in runtimes}
        for rt in runtimes:  # warm-up, not counted
            burst(rt, image, min(args.pods, 5), 0)
        for i in range(1, args.runs + 1):
            order = runtimes if i % 2 else list(reversed(runtimes))
            for rt in order:
                result = burst(rt, image, args.pods, i)
                samples[rt.name].append(result)
                print(
                    f"run {i}/{args.runs} {rt.name}: start {result['start_s']:.2f}s "
                    f"({result['start_cpu_s']:.2f} CPU-s), teardown {result['teardown_s']:.2f}s "
                    f"({result['teardown_cpu_s']:.2f} CPU-s); start CPU of "
                    f"{rt.name}'s own process {result['start_cpu_own_process_s']:.2f}",
                    file=sys.stderr,
                )
        checks = _leak_checks(runtimes)
    title = (
        f"{args.pods} pods (one busybox container each) started at once, then torn down at "
        f"once, with a PLEG-like relist every {RELIST_PERIOD:g}s; {args.runs} runs each, "
        "alternating; medians (min-max)"
    )
    print("\n".join(_report(title, versions, samples)))
    clean = all(c.ok for cs in checks.values() for c in cs)
    return {
        "benchmark": "burst",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "pods": args.pods,
        "runs": args.runs,
        "versions": versions,
        "samples": samples,
        "leak_checks": {
            name: [{"what": c.what, "ok": c.ok, "left": c.left} for c in cs]
            for name, cs in checks.items()
        },
    }, clean


ROWS = (
    ("start_s", "start, s"),
    ("start_cpu_s", "start, runtime CPU-s"),
    ("start_machine_cpu_s", "start, machine CPU-s"),
    ("teardown_s", "teardown, s"),
    ("teardown_cpu_s", "teardown, runtime CPU-s"),
    ("teardown_machine_cpu_s", "teardown, machine CPU-s"),
)


def _report(
    title: str,
    versions: dict[str, str],
    samples: dict[str, list[dict[str, float]]],
    rows: Sequence[tuple[str, str]] = ROWS,
    phases: Sequence[str] = ("start", "teardown"),
) -> list[str]:
    """The phases' table (runtime and machine CPU beside the times), then the floor."""
    lines = ["", title, f"{'':<22}{'criproxy':>22}{'containerd':>22}{'ratio':>8}"]
    for key, label in rows:
        cells = []
        medians = []
        for name in ("criproxy", "containerd"):
            values = [s[key] for s in samples[name]]
            med = statistics.median(values)
            medians.append(med)
            cells.append(f"{med:.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"{label:<22}{cells[0]:>22}{cells[1]:>22}{medians[0] / medians[1]:>8.2f}")
    lines += _floor(samples, phases)
    for name, version in versions.items():
        lines.append(f"{name}: {version}")
    return lines


def _floor(samples: dict[str, list[dict[str, float]]], phases: Sequence[str]) -> list[str]:
    """What each phase could take at best if the runtime's own process (criproxy, or
    containerd with its CRI plugin) cost no CPU: the CPU of everything else (criproxy's
    containerd, shims, runc, CNI plugins, pause and workload processes, the kernel, this
    client) spread over every core, as a ratio of containerd's median time."""
    cores = os.cpu_count() or 1
    lines = [f"if the runtime's own process cost no CPU ({cores} cores; ratio to containerd):"]
    for phase in phases:
        wall = statistics.median(s[f"{phase}_s"] for s in samples["containerd"])
        cells = []
        for name in ("criproxy", "containerd"):
            rest = statistics.median(
                s[f"{phase}_machine_cpu_s"] - s[f"{phase}_cpu_own_process_s"] for s in samples[name]
            )
            cells.append(f"{name} {rest:.2f} CPU-s, >= {rest / cores / wall:.2f}x")
        lines.append(f"  {phase}: the rest of the machine: " + "; ".join(cells))
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pods", type=int, default=30, help="pods started at once")
    parser.add_argument("--runs", type=int, default=5, help="runs per runtime")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.runs < 1:
        parser.error("--pods and --runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("burst", args, body)


if __name__ == "__main__":
    sys.exit(main())
