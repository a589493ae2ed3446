"""Static pods started at once by a real kubelet, then their manifests removed: criproxy
against containerd's built-in CRI, side by side, each under a kubelet of its own.

A kubelet is not part of criproxy: build one outside the repository and name it with
`--kubelet` (bench/README.md says how one was built here). It runs standalone (static pods,
no API server) on loopback ports with its own root dir, its cgroups under a parent of their
own, no iptables chains (`makeIPTablesUtilChains: false`), and in a private mount namespace
where the kernel settings it would set for the whole machine (`vm.overcommit_memory`,
`kernel.panic`, ...) are copies. A fresh kubelet serves each run.

The start phase runs from the manifests appearing to every container RUNNING, the teardown
from the manifests going to no container running and no sandbox ready (the kubelet's
garbage collection removes them later, outside the timing), both seen by polling the
runtime's CRI every 100 ms. Runs alternate between the runtimes.

The teardown is also split where the kubelet's log (at -v=2) says it began killing the
last pod's container: a pod worker waits for a PLEG relist newer than its last sync before
it kills anything (the kubelet's pod_workers.go: "this adds ~1s of latency on all
transitions from sync to terminating"), so the kills come in waves a relist apart, and
what follows the last one is the runtime's own part: its time, and the floor its machine
CPU sets (as for the phases), are reported apart.

    .venv/bin/python -m bench.kubelet --kubelet PATH [--pods 30] [--runs 5] [--json FILE]

Needs root, unshare (util-linux), and the integration tests' requirements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.burst import ROWS, _report
from bench.containers import SCRIPT, _image
from bench.pods import CALL_TIMEOUT, _busy_cpu_s, _leak_checks, _own_cpu_s, _preflight, _start
from bench.pull import BenchError, check_hosts_used, cpu_seconds, run_bench
from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.support.registry import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bench.pods import Runtime

NAMESPACE = "bench-kubelet"
CGROUP_ROOT = "criproxy-bench-kubelet"
SHADOWED = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
"""The kernel settings a kubelet sets at start; it gets copies of them."""
HOST_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"))
"""What a kubelet makes whatever its root dir: removed after if the run made them."""
POLL = 0.1
PHASE_TIMEOUT = 300.0
KILLING = "Killing container with a grace period"
"""The kubelet's line (-v=2) as a pod worker starts stopping a container."""
_KLOG_TIME = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})")


@dataclass
class Kubelet:
    """One standalone kubelet on a runtime's socket, with a root dir of its own."""

    binary: Path
    base: Path
    endpoint: Path
    verbosity: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def manifests(self) -> Path:
        return self.base / "manifests"

    @property
    def log(self) -> Path:
        return self.base / "kubelet.log"

    def start(self) -> None:
        self.manifests.mkdir(parents=True)
        healthz = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": str(self.manifests),
            "fileCheckFrequency": "1s",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "oomScoreAdj": 0,  # the kubelet's own -999 needs CAP_SYS_RESOURCE
            "maxOpenFiles": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "makeIPTablesUtilChains": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "podLogsDir": str(self.base / "pod-logs"),
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
        }
        config_path = self.base / "config.yaml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        shadow = self.base / "sysctl"
        shadow.mkdir()
        script = "\n".join(
            [
                "set -e",
                f"for k in {' '.join(SHADOWED)}; do",
                '  [ -e "/proc/sys/$k" ] || continue',
                f'  f="{shadow}/$(echo "$k" | tr / _)"',
                '  cat "/proc/sys/$k" > "$f"',
                '  mount --bind "$f" "/proc/sys/$k"',
                "done",
                f'exec "{self.binary}" --config="{config_path}"'
                f' --container-runtime-endpoint="unix://{self.endpoint}"'
                f' --root-dir="{self.base / "root"}" --cert-dir="{self.base / "pki"}"'
                f" --v={self.verbosity}",
            ]
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"kubelet exited at start:\n{_tail(self.log)}")
            url = f"http://127.0.0.1:{healthz}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return
            time.sleep(0.2)
        raise BenchError(f"kubelet not healthy after 60 s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def manifest(index: int, image: str) -> dict[str, Any]:
    """A static pod: one busybox container that exits at SIGTERM."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"burst-{index}", "namespace": NAMESPACE},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", SCRIPT],
                }
            ],
        },
    }


def _ours(labels: Any) -> bool:
    return bool(labels.get("io.kubernetes.pod.namespace") == NAMESPACE)


def running(rt: Runtime) -> int:
    containers = rt.runtime.ListContainers(
        api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(
                state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
            )
        ),
        timeout=CALL_TIMEOUT,
    ).containers
    return sum(1 for c in containers if _ours(c.labels))


def ready_pods(rt: Runtime) -> int:
    pods = rt.runtime.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(
                state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
            )
        ),
        timeout=CALL_TIMEOUT,
    ).items
    return sum(1 for p in pods if _ours(p.labels))


def kill_times(log: Path, since: float) -> list[float]:
    """When the kubelet began killing each container, as epoch seconds, from `since` on
    (klog stamps local time without a year)."""
    year = datetime.fromtimestamp(since).year
    times = []
    for line in log.read_text(errors="replace").splitlines():
        match = _KLOG_TIME.match(line)
        if match is None or KILLING not in line:
            continue
        month, day, hour, minute, second, micro = (int(g) for g in match.groups())
        stamp = datetime(year, month, day, hour, minute, second, micro).timestamp()  # local
        if stamp >= since:
            times.append(stamp)
    return times


def _until(
    done: Callable[[], bool],
    what: str,
    kubelet: Kubelet,
    polled: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT
    while not done():
        if polled is not None:
            polled()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not reached in {PHASE_TIMEOUT:g} s:\n{_tail(kubelet.log)}")
        if kubelet.proc is not None and kubelet.proc.poll() is not None:
            raise BenchError(f"the kubelet exited during the run:\n{_tail(kubelet.log)}")
        time.sleep(POLL)


def _at(samples: list[tuple[float, float, float]], when: float) -> tuple[float, float]:
    """The machine's and the runtime's own CPU seconds at the last poll before `when`."""
    before = [s for s in samples if s[0] <= when] or samples[:1]
    return before[-1][1], before[-1][2]


def burst(
    rt: Runtime, args: argparse.Namespace, base: Path, image: str, pods: int
) -> dict[str, float]:
    """One run: a fresh kubelet, `pods` manifests at once, then all of them removed."""
    kubelet = Kubelet(args.kubelet, base, rt.cri_socket, args.kubelet_v)
    try:
        kubelet.start()
        time.sleep(3)  # its first relists and housekeeping, outside the timing
        staged = base / "staged"
        staged.mkdir()
        for i in range(pods):
            (staged / f"burst-{i}.yaml").write_text(json.dumps(manifest(i, image)))
        pids = (*rt.pids, kubelet.proc.pid if kubelet.proc else 0)
        each0 = [cpu_seconds((pid,)) for pid in rt.pids]
        busy0, cpu0, t0 = _busy_cpu_s(), _own_cpu_s(rt.pids), time.perf_counter()
        for path in sorted(staged.iterdir()):
            path.rename(kubelet.manifests / path.name)
        _until(lambda: running(rt) == pods, f"{pods} running containers", kubelet)
        up, cpu1, busy1 = time.perf_counter() - t0, _own_cpu_s(rt.pids), _busy_cpu_s()
        each = [cpu_seconds((pid,)) - c for pid, c in zip(rt.pids, each0, strict=True)]
        kubelet_cpu = cpu_seconds(pids[-1:])
        t1, removed = time.perf_counter(), time.time()
        polls: list[tuple[float, float, float]] = [(removed, busy1, each[0])]
        for path in kubelet.manifests.iterdir():
            path.unlink()
        _until(
            lambda: running(rt) == 0 and ready_pods(rt) == 0,
            "every pod stopped",
            kubelet,
            lambda: polls.append((time.time(), _busy_cpu_s(), cpu_seconds(rt.pids[:1]) - each0[0])),
        )
        down, cpu2, busy2 = time.perf_counter() - t1, _own_cpu_s(rt.pids), _busy_cpu_s()
        kills = kill_times(kubelet.log, removed)
        if len(kills) < pods:
            raise BenchError(
                f"the kubelet's log has {len(kills)} of {pods} kills (needs --kubelet-v >= 2)"
            )
        last_kill = max(kills) - removed
        busy_at_kill, own_at_kill = _at(polls, max(kills))
        each2 = [cpu_seconds((pid,)) - c for pid, c in zip(rt.pids, each0, strict=True)]
        kubelet_cpu2 = cpu_seconds(pids[-1:])
    finally:
        kubelet.stop()
        rt.remove_leftovers()  # the stopped sandboxes the kubelet's GC would remove later
    return {
        "start_s": up,
        "teardown_s": down,
        "teardown_last_kill_s": last_kill,
        "after_last_kill_s": down - last_kill,
        "after_last_kill_machine_cpu_s": busy2 - busy_at_kill,
        "after_last_kill_cpu_own_process_s": each2[0] - own_at_kill,
        "start_cpu_s": cpu1 - cpu0,
        "teardown_cpu_s": cpu2 - cpu1,
        "start_cpu_own_process_s": each[0],
        "teardown_cpu_own_process_s": each2[0] - each[0],
        "start_machine_cpu_s": busy1 - busy0,
        "teardown_machine_cpu_s": busy2 - busy1,
        "kubelet_cpu_s": kubelet_cpu2,
        "kubelet_start_cpu_s": kubelet_cpu,
    }


def _teardown_floor(samples: dict[str, list[dict[str, float]]]) -> list[str]:
    """The teardown no runtime could beat here: the kubelet's last kill, then the rest of
    the machine's work after it (the runtime's own process left out) over every core."""
    cores = os.cpu_count() or 1
    wall = statistics.median(s["teardown_s"] for s in samples["containerd"])
    cells = []
    for name in ("criproxy", "containerd"):
        kills = statistics.median(s["teardown_last_kill_s"] for s in samples[name])
        rest = statistics.median(
            s["after_last_kill_machine_cpu_s"] - s["after_last_kill_cpu_own_process_s"]
            for s in samples[name]
        )
        floor = kills + rest / cores
        cells.append(
            f"{name} {kills:.2f} + {rest:.2f}/{cores} = {floor:.2f} s, >= {floor / wall:.2f}x"
        )
    return ["  teardown, the kubelet's last kill then the rest after it: " + "; ".join(cells)]


def _cgroup_dirs() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [d / CGROUP_ROOT for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink()]


def make_cgroup_root() -> None:
    """The kubelet's cgroup root, in every hierarchy (it refuses to start without it)."""
    for path in _cgroup_dirs():
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # a cpuset cgroup starts empty
            own = path / name
            if own.exists() and not own.read_text().strip():
                own.write_text((path.parent / name).read_text())


def remove_cgroup_root() -> None:
    for path in _cgroup_dirs():
        if path.is_dir():
            for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    made_here = [p for p in HOST_PATHS if not p.exists()]
    with contextlib.ExitStack() as stack:
        for path in made_here:
            stack.callback(shutil.rmtree, path, ignore_errors=True)
        stack.callback(remove_cgroup_root)
        make_cgroup_root()
        runtimes, pause_ref = _start(base, stack)
        image = _image(base, stack)
        versions = {rt.name: rt.describe() for rt in runtimes}
        kubelet_version = subprocess.run(
            [str(args.kubelet), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        for rt in runtimes:
            print(f"{rt.name}: {versions[rt.name]}", file=sys.stderr)
            rt.prepull(pause_ref)
            rt.prepull(image)
        check_hosts_used(runtimes[1].log)
        samples: dict[str, list[dict[str, float]]] = {rt.name: [] for rt in runtimes}
        for rt in runtimes:  # warm-up, not counted
            burst(rt, args, base / f"warm-{rt.name}", image, min(args.pods, 5))
        for i in range(1, args.runs + 1):
            order = runtimes if i % 2 else list(reversed(runtimes))
            for rt in order:
                result = burst(rt, args, base / f"run{i}-{rt.name}", image, args.pods)
                samples[rt.name].append(result)
                print(
                    f"run {i}/{args.runs} {rt.name}: start {result['start_s']:.2f}s, "
                    f"teardown {result['teardown_s']:.2f}s; {rt.name}'s own process "
                    f"{result['start_cpu_own_process_s']:.2f} CPU-s at start; the kubelet "
                    f"{result['kubelet_cpu_s']:.2f} CPU-s in all",
                    file=sys.stderr,
                )
        checks = _leak_checks(runtimes)
    title = (
        f"{args.pods} static pods (one busybox container each) started at once by a kubelet "
        f"({kubelet_version}), then their manifests removed; {args.runs} runs each, "
        "alternating; medians (min-max)"
    )
    rows = (
        *ROWS,
        ("teardown_last_kill_s", "kubelet's last kill, s"),
        ("after_last_kill_s", "after the last kill, s"),
    )
    phases = ("start", "teardown", "after_last_kill")
    lines = _report(title, versions, samples, rows, phases)
    print(
        "\n".join([*lines[: -len(versions)], *_teardown_floor(samples), *lines[-len(versions) :]])
    )
    clean = all(c.ok for cs in checks.values() for c in cs)
    return {
        "benchmark": "kubelet",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "kubelet": kubelet_version,
        "pods": args.pods,
        "runs": args.runs,
        "versions": versions,
        "samples": samples,
        "leak_checks": {
            name: [{"what": c.what, "ok": c.ok, "left": c.left} for c in cs]
            for name, cs in checks.items()
        },
    }, clean


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kubelet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubelet", type=Path, required=True, help="a kubelet binary")
    parser.add_argument("--pods", type=int, default=30, help="static pods at once")
    parser.add_argument("--runs", type=int, default=5, help="runs per runtime")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--kubelet-v", type=int, default=2, help="the kubelet's log level (>= 2: its kills)"
    )
    args = parser.parse_args(argv)
    if args.pods < 1 or args.runs < 1:
        parser.error("--pods and --runs must be >= 1")
    if args.kubelet_v < 2:
        parser.error("--kubelet-v must be >= 2 (the teardown's split reads the kubelet's kills)")
    if not os.access(args.kubelet, os.X_OK) or shutil.which("unshare") is None:
        parser.error(f"needs an executable --kubelet ({args.kubelet}) and unshare")
    args.kubelet = args.kubelet.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("kubelet", args, body)


if __name__ == "__main__":
    sys.exit(main())
