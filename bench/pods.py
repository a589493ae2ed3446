"""Pod lifecycle wall time: criproxy against containerd's built-in CRI plugin, in one run.

Both runtimes run the same pods (RunPodSandbox, StopPodSandbox, RemovePodSandbox) with the
same pause image from the same local docker-registry, pre-pulled so no pull is timed. Each
runs on its own private containerd (same binary, same overlayfs snapshotter, same disk)
with its own bridge + host-local + portmap CNI network. Phases alternate between the two:
a sequential phase (one pod at a time) and a concurrent one (`--concurrency` workers).
Afterwards it checks that neither left netns pins, IP allocations, veths, containers or
mounts behind.

    .venv/bin/python -m bench.pods [--pods 50] [--concurrency 10] [--json FILE] [--keep]

Needs root, containerd, runc, the CNI plugins and docker-registry (the integration tests'
requirements).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from bench.pull import (
    NAMESPACE,
    BenchError,
    CriContainerd,
    Endpoint,
    check_hosts_used,
    run_bench,
    tail,
    write_hosts,
)
from criproxy._generated.containerd.services.containers.v1 import (
    containers_pb2,
    containers_pb2_grpc,
)
from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import (
    CNI_BIN_DIRS,
    ContainerdProcess,
    Criproxy,
    wait_until,
)
from tests.support.images import ImageConfig, busybox_image
from tests.support.registry import start_registry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.support.registry import Registry

T = TypeVar("T")
Stats = dict[str, object]

PAUSE_REPO = "bench/pause"
PAUSE_TAG = "3.10"
RUN_TIMEOUT = 120.0
CALL_TIMEOUT = 60.0
CHECK_TIMEOUT = 10.0
GOAL = 0.8  # the goal: criproxy's lifecycle median <= 0.8x containerd's
OPS = ("run", "stop", "remove")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
NETWORKS = {  # runtime: (CNI network name, bridge, subnet); distinct, so neither sees the other
    "criproxy": ("cpxbench", "cpxbench0", "10.126.0.0/16"),
    "containerd": ("ctdbench", "ctdbench0", "10.127.0.0/16"),
}


# ---------------------------------------------------------------- networks and the reference


@dataclass(frozen=True)
class PodNetwork:
    """One runtime's bridge + host-local + portmap network, with host-local's data dir."""

    name: str
    bridge: str
    subnet: str
    data_dir: Path

    def write(self, conf_dir: Path) -> None:
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (conf_dir / f"10-{self.name}.conflist").write_text(json.dumps(conflist, indent=2))

    def contains(self, ip: str) -> bool:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(ip) in ipaddress.ip_network(self.subnet)
        return False

    def allocations(self) -> list[str]:
        """IPs host-local handed out and did not release."""
        directory = self.data_dir / self.name
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())

    def bridge_exists(self) -> bool:
        return Path(f"/sys/class/net/{self.bridge}").exists()

    def ports(self) -> list[str]:
        """Interfaces (pods' veths) still attached to the bridge."""
        out = subprocess.run(
            ["ip", "-o", "link", "show", "master", self.bridge],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            return []
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]

    def delete_bridge(self) -> None:
        if self.bridge_exists():
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


# ---------------------------------------------------------------- one runtime under test


@dataclass(frozen=True)
class Lifecycle:
    """One pod's three calls, each timed by the wall clock around its RPC, in seconds."""

    run: float
    stop: float
    remove: float

    @property
    def total(self) -> float:
        return self.run + self.stop + self.remove


@dataclass(frozen=True)
class Check:
    """One leak check: what is still there (nothing when it passes)."""

    what: str
    left: list[str]
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.left


class _CallFailed(Exception):
    def __init__(self, op: str, message: str) -> None:
        super().__init__(f"{op}: {message}")


@dataclass
class Runtime(Endpoint):
    """A CRI endpoint, the containerd beneath it, its pod network, and what its pods left."""

    network: PodNetwork
    logs_dir: Path
    mount_roots: tuple[Path, ...]
    netns_dir: Path | None = None
    """A private dir of netns pins to list at the end (criproxy's); None for the host's."""
    pids: tuple[int, ...] = ()
    """The runtime's own long-lived processes (criproxy and its containerd; containerd)."""
    netns_seen: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.containers = containers_pb2_grpc.ContainersStub(self.containerd_channel)

    def prepull(self, ref: str) -> None:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        try:
            self.images.PullImage(request, timeout=RUN_TIMEOUT)
        except grpc.RpcError as err:
            raise BenchError(
                f"{self.name}: PullImage({ref}) failed: {err.code().name}: {err.details()}\n"
                f"--- tail of {self.log}:\n{tail(self.log)}"
            ) from err

    def pod_config(self, phase: str, index: int) -> api_pb2.PodSandboxConfig:
        """A pod as a kubelet sends it: unique name, uid and namespace; pod network."""
        name = f"{phase}-{index}"
        log_dir = self.logs_dir / name
        log_dir.mkdir(parents=True, exist_ok=True)  # the kubelet makes it before the call
        namespaces = api_pb2.NamespaceOption(
            network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.POD
        )
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=name, uid=str(uuid.uuid4()), namespace=f"bench-{phase}-{index}"
            ),
            hostname=name,
            log_directory=str(log_dir),
            labels={"app": "bench-pods", "phase": phase},
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=namespaces)
            ),
        )

    def _timed(self, op: str, call: Callable[[], T]) -> tuple[T, float]:
        start = time.perf_counter()
        try:
            result = call()
        except grpc.RpcError as err:
            raise _CallFailed(op, f"{err.code().name}: {err.details()}") from err
        return result, time.perf_counter() - start

    def lifecycle(self, phase: str, index: int) -> Lifecycle | None:
        """Run, check, stop and remove one pod; a failure is recorded and gives None."""
        config = self.pod_config(phase, index)
        try:
            response, run = self._timed(
                "RunPodSandbox",
                lambda: self.runtime.RunPodSandbox(
                    api_pb2.RunPodSandboxRequest(config=config), timeout=RUN_TIMEOUT
                ),
            )
            pod_id = response.pod_sandbox_id
            self.live.add(pod_id)
            self._check_ready(pod_id)  # untimed
            stop_request = api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)
            _, stop = self._timed(
                "StopPodSandbox",
                lambda: self.runtime.StopPodSandbox(stop_request, timeout=CALL_TIMEOUT),
            )
            remove_request = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
            _, remove = self._timed(
                "RemovePodSandbox",
                lambda: self.runtime.RemovePodSandbox(remove_request, timeout=CALL_TIMEOUT),
            )
        except _CallFailed as err:
            self.errors.append(f"{phase} pod {index}: {err}")
            print(f"{self.name}: {phase} pod {index}: {err}", file=sys.stderr)
            return None
        self.live.discard(pod_id)
        return Lifecycle(run, stop, remove)

    def _check_ready(self, pod_id: str) -> None:
        """Both runtimes must have done the same work: a ready pod with an IP of its network.

        Also records the pod's netns pin from the verbose info (criproxy's
        `netNamespacePath`, containerd's runtime spec), for the leak check.
        """
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        response, _ = self._timed(
            "PodSandboxStatus", lambda: self.runtime.PodSandboxStatus(request, timeout=30)
        )
        status = response.status
        if status.state != api_pb2.SANDBOX_READY or not self.network.contains(status.network.ip):
            raise _CallFailed(
                "PodSandboxStatus",
                f"pod {pod_id} is {api_pb2.PodSandboxState.Name(status.state)} with IP "
                f"{status.network.ip!r}, want SANDBOX_READY in {self.network.subnet}",
            )
        netns = _netns_path(json.loads(response.info.get("info", "{}")))
        if not netns:
            raise _CallFailed("PodSandboxStatus", f"pod {pod_id}: no netns path in its info")
        self.netns_seen.add(netns)

    def pods(self) -> list[str]:
        response = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30)
        return [pod.id for pod in response.items]

    def containerd_containers(self) -> list[str]:
        request = containers_pb2.ListContainersRequest()
        response = self.containers.List(request, metadata=self._md, timeout=30)
        return [c.id for c in response.containers]

    def netns_left(self) -> list[str]:
        left = {path for path in self.netns_seen if os.path.lexists(path)}
        if self.netns_dir is not None and self.netns_dir.is_dir():
            left |= {str(p) for p in self.netns_dir.iterdir()}
        return sorted(left)

    def _netns_note(self) -> str:
        dirs = sorted({os.path.dirname(path) for path in self.netns_seen})
        return f"{len(self.netns_seen)} created during the run, in {', '.join(dirs) or '-'}"

    def mounts(self) -> list[str]:
        roots = tuple(f"{root}/" for root in self.mount_roots)
        text = Path("/proc/self/mountinfo").read_text()
        return [p for p in (line.split()[4] for line in text.splitlines()) if p.startswith(roots)]

    def leak_checks(self) -> list[Check]:
        return [
            Check("pods listed by ListPodSandbox", self.pods()),
            Check(f"containers in containerd's {NAMESPACE}", self.containerd_containers()),
            Check("netns pins", self.netns_left(), self._netns_note()),
            Check("host-local allocations", self.network.allocations()),
            Check(f"veths on {self.network.bridge}", self.network.ports()),
            Check("mounts under its containerd and dirs", self.mounts()),
        ]

    def remove_leftovers(self) -> None:
        """Best effort at teardown: stop and remove every pod the runtime still lists."""
        try:
            pod_ids = set(self.pods()) | self.live
        except grpc.RpcError:
            pod_ids = set(self.live)
        for pod_id in pod_ids:
            try:
                self.runtime.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT
                )
                self.runtime.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT
                )
            except grpc.RpcError as err:
                print(f"{self.name}: teardown of pod {pod_id}: {err.details()}", file=sys.stderr)
        self.live.clear()

    def unpin_host_netns(self) -> None:
        """Unmount and delete host netns pins this runtime's pods made and left behind."""
        if self.netns_dir is not None:
            return  # criproxy's pins are under the temp dir, unmounted with it
        for path in self.netns_left():
            subprocess.run(["umount", path], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                os.unlink(path)


def _netns_path(info: dict[str, object]) -> str:
    """The pod's netns from its verbose info: criproxy's key, or containerd 1.6's spec."""
    path = info.get("netNamespacePath")
    if isinstance(path, str) and path:
        return path
    spec = info.get("runtimeSpec")
    linux = spec.get("linux", {}) if isinstance(spec, dict) else {}
    for ns in linux.get("namespaces", []) if isinstance(linux, dict) else []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return str(ns.get("path", ""))
    return ""


# ---------------------------------------------------------------- phases and statistics


def sequential(rt: Runtime, pods: int) -> list[Lifecycle]:
    """`pods` lifecycles one after another."""
    out = []
    for i in range(pods):
        lifecycle = rt.lifecycle("seq", i)
        if lifecycle is not None:
            out.append(lifecycle)
        if (i + 1) % 10 == 0 or i + 1 == pods:
            print(f"sequential {rt.name}: {i + 1}/{pods}", file=sys.stderr)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / _TICK


def _own_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds these processes spent themselves (not their children)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


@dataclass(frozen=True)
class Cpu:
    """CPU milliseconds per pod over a concurrent phase: the machine's and the runtime's own.

    The concurrent phase keeps both cores busy, so its lifecycle latency follows the CPU a
    pod costs in all: the runtime's own processes plus the work both runtimes share (shims,
    runc, CNI plugins, the kernel's netns and cgroup work) and the bench's client.
    """

    machine_ms: float
    runtime_ms: float

    @property
    def shared_ms(self) -> float:
        return self.machine_ms - self.runtime_ms


def concurrent(rt: Runtime, pods: int, workers: int) -> tuple[list[Lifecycle], float, Cpu]:
    """`pods` lifecycles spread over `workers` threads; them, the wall time, the CPU."""
    busy, own = _busy_cpu_s(), _own_cpu_s(rt.pids)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=rt.name) as pool:
        results = list(pool.map(lambda i: rt.lifecycle("con", i), range(pods)))
    wall = time.perf_counter() - start
    cpu = Cpu((_busy_cpu_s() - busy) * 1000 / pods, (_own_cpu_s(rt.pids) - own) * 1000 / pods)
    print(f"concurrent {rt.name}: {pods} pods, {workers} workers, {wall:.2f}s", file=sys.stderr)
    return [r for r in results if r is not None], wall, cpu


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(samples: Sequence[float]) -> Stats:
    if not samples:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "samples": []}
    return {
        "n": len(samples),
        "p50": percentile(samples, 0.50),
        "p90": percentile(samples, 0.90),
        "p99": percentile(samples, 0.99),
        "max": max(samples),
        "samples": list(samples),
    }


def by_op(lifecycles: Sequence[Lifecycle]) -> dict[str, Stats]:
    """Statistics of each call and of the whole lifecycle (their sum)."""
    return {
        "run": summary([lc.run for lc in lifecycles]),
        "stop": summary([lc.stop for lc in lifecycles]),
        "remove": summary([lc.remove for lc in lifecycles]),
        "lifecycle": summary([lc.total for lc in lifecycles]),
    }


@dataclass(frozen=True)
class Result:
    """One runtime's numbers from both phases, and the calls that failed."""

    sequential: dict[str, Stats]
    concurrent: dict[str, Stats]
    wall_s: float
    pods_per_s: float
    cpu: Cpu
    errors: list[str]

    def median(self, phase: str) -> object:
        return getattr(self, phase)["lifecycle"]["p50"]

    def to_json(self) -> dict[str, object]:
        return {
            "sequential": self.sequential,
            "concurrent": {
                **self.concurrent,
                "wall_s": self.wall_s,
                "pods_per_s": self.pods_per_s,
                "cpu_ms_per_pod": {
                    "machine": self.cpu.machine_ms,
                    "runtime_own": self.cpu.runtime_ms,
                    "shared": self.cpu.shared_ms,
                },
            },
            "errors": self.errors,
        }


def ratio(a: object, b: object) -> float | None:
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return a / b
    return None


def fmt(value: object, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, float) else "-"


# ---------------------------------------------------------------- the benchmark


def _preflight() -> None:
    """The CNI plugins are there, and no other run owns the bench's bridges."""
    for plugin in CNI_PLUGINS:
        if not any((Path(d) / plugin).exists() for d in CNI_BIN_DIRS):
            raise BenchError(f"CNI plugin {plugin} not found in {CNI_BIN_DIRS}")
    for _, bridge, _ in NETWORKS.values():
        if Path(f"/sys/class/net/{bridge}").exists():
            raise BenchError(
                f"bridge {bridge} exists already: another bench.pods runs, or one "
                f"crashed (then: ip link del {bridge})"
            )


def _start(base: Path, stack: contextlib.ExitStack) -> tuple[list[Runtime], str]:
    """Registry with the pause image, both runtimes with their networks; teardown on stack."""
    registry: Registry = start_registry(base / "registry")
    stack.callback(registry.stop)
    pause = busybox_image(config=ImageConfig(entrypoint=("/bin/sleep",), cmd=("2147483647",)))
    registry.push(PAUSE_REPO, pause, PAUSE_TAG)
    pause_ref = registry.reference(PAUSE_REPO, PAUSE_TAG)
    write_hosts(base / "certs.d", registry)

    cpx_net = PodNetwork(*NETWORKS["criproxy"], base / "cni-criproxy")
    ctd_net = PodNetwork(*NETWORKS["containerd"], base / "cni-containerd")
    for net in (cpx_net, ctd_net):
        stack.callback(net.delete_bridge)

    plain = ContainerdProcess(base / "cd-criproxy")
    stack.callback(plain.stop)
    plain.start()
    proxy = Criproxy(
        base / "criproxy",
        containerd=plain.socket,
        config={"sandbox_image": pause_ref, "registry": {"config_path": str(base / "certs.d")}},
    )
    cpx_net.write(proxy.cni_dir)
    stack.callback(proxy.stop)
    proxy.start()

    reference = CriContainerd(base / "cd-cri", certs_d=base / "certs.d", sandbox_image=pause_ref)
    ctd_net.write(reference.base / "net.d")
    stack.callback(reference.stop)
    reference.start()

    runtimes = [
        Runtime(
            "criproxy",
            proxy.socket,
            plain.socket,
            proxy.log,
            cpx_net,
            base / "logs" / "criproxy",
            (plain.base, proxy.base),
            netns_dir=proxy.state / "netns",
            pids=_pids(proxy.proc, plain.proc),
        ),
        Runtime(
            "containerd",
            reference.socket,
            reference.socket,
            reference.log,
            ctd_net,
            base / "logs" / "containerd",
            (reference.base,),
            pids=_pids(reference.proc),
        ),
    ]
    for rt in runtimes:  # reverse order on the stack: leftovers go before the runtimes stop
        stack.callback(rt.close)
        stack.callback(rt.unpin_host_netns)
        stack.callback(rt.remove_leftovers)
    return runtimes, pause_ref


def _pids(*procs: subprocess.Popen[bytes] | None) -> tuple[int, ...]:
    return tuple(p.pid for p in procs if p is not None)


def _leak_checks(runtimes: Sequence[Runtime]) -> dict[str, list[Check]]:
    """Every check per runtime, once they all pass or after CHECK_TIMEOUT."""
    checks: dict[str, list[Check]] = {}

    def clean() -> bool:
        checks.update({rt.name: rt.leak_checks() for rt in runtimes})
        return all(c.ok for cs in checks.values() for c in cs)

    with contextlib.suppress(TimeoutError):
        wait_until(clean, CHECK_TIMEOUT, interval=0.2)
    return checks


def _measure(args: argparse.Namespace, runtimes: Sequence[Runtime]) -> dict[str, Result]:
    """Warm-up, then the phases: sequential A B, concurrent B A."""
    for rt in runtimes:  # warm-up: imports, connections, CNI, page cache; not counted
        warm = rt.lifecycle("warmup", 0)
        if warm is None:
            raise BenchError(f"{rt.name}: the warm-up pod failed: {rt.errors[-1]}\n{tail(rt.log)}")
        print(f"warm-up {rt.name}: {warm.total:.3f}s", file=sys.stderr)
    seq = {rt.name: sequential(rt, args.pods) for rt in runtimes}
    con = {rt.name: concurrent(rt, args.pods, args.concurrency) for rt in reversed(runtimes)}
    results = {}
    for rt in runtimes:
        lifecycles, wall, cpu = con[rt.name]
        results[rt.name] = Result(
            by_op(seq[rt.name]), by_op(lifecycles), wall, len(lifecycles) / wall, cpu, rt.errors
        )
    return results


def _print_report(
    args: argparse.Namespace,
    versions: dict[str, str],
    results: dict[str, Result],
    ratios: dict[str, float | None],
    checks: dict[str, list[Check]],
) -> None:
    print()
    print(
        f"Pod lifecycle RunPodSandbox -> StopPodSandbox -> RemovePodSandbox, {args.pods} pods "
        f"per phase and runtime, after one warm-up pod each; pause image pre-pulled; "
        f"bridge + host-local + portmap CNI"
    )
    for name, version in versions.items():
        print(f"  {name}: {version}")
    print("\nsequential (one pod at a time), seconds:")
    print(f"{'runtime':<12}{'call':<11}{'n':>4}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for name, res in results.items():
        for op in (*OPS, "lifecycle"):
            s = res.sequential[op]
            print(
                f"{name if op == 'run' else '':<12}{op:<11}{s['n']:>4}{fmt(s['p50']):>8}"
                f"{fmt(s['p90']):>8}{fmt(s['p99']):>8}{fmt(s['max']):>8}"
            )
    print(f"\nconcurrent ({args.concurrency} workers), seconds:")
    print(
        f"{'runtime':<12}{'n':>4}{'lifecycle p50':>15}{'p99':>8}{'wall':>9}{'pods/s':>8}"
        f"{'CPU ms/pod: machine':>21}{'own':>6}{'shared':>8}"
    )
    for name, res in results.items():
        life = res.concurrent["lifecycle"]
        print(
            f"{name:<12}{life['n']:>4}{fmt(life['p50']):>15}{fmt(life['p99']):>8}"
            f"{res.wall_s:>9.2f}{res.pods_per_s:>8.2f}"
            f"{res.cpu.machine_ms:>21.1f}{res.cpu.runtime_ms:>6.1f}{res.cpu.shared_ms:>8.1f}"
        )
    print()
    for phase, value in ratios.items():
        verdict = "-" if value is None else ("met" if value <= GOAL else "NOT met")
        print(
            f"ratio criproxy/containerd, {phase} lifecycle median = {fmt(value, '.2f')}"
            f"  (goal <= {GOAL:.2f}: {verdict})"
        )
    for name, res in results.items():
        if res.errors:
            print(f"\n{name}: {len(res.errors)} failed pods, first: {res.errors[0]}")
    print("\nleak checks after the run:")
    for name, cs in checks.items():
        for c in cs:
            state = "ok" if c.ok else f"LEFT {len(c.left)}: {', '.join(c.left[:3])}"
            note = f"  ({c.note})" if c.note else ""
            print(f"  {name:<12}{c.what:<40}{state}{note}")


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    """Start everything, measure, check for leaks, report; returns (report, all clean)."""
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        versions = {rt.name: rt.describe() for rt in runtimes}
        for rt in runtimes:
            print(f"{rt.name}: {versions[rt.name]}", file=sys.stderr)
            rt.prepull(pause_ref)
        check_hosts_used(runtimes[1].log)
        results = _measure(args, runtimes)
        checks = _leak_checks(runtimes)

    ratios = {
        phase: ratio(results["criproxy"].median(phase), results["containerd"].median(phase))
        for phase in ("sequential", "concurrent")
    }
    _print_report(args, versions, results, ratios, checks)
    clean = all(c.ok for cs in checks.values() for c in cs) and not any(
        r.errors for r in results.values()
    )
    report = {
        "benchmark": "pods",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "pods": args.pods,
        "concurrency": args.concurrency,
        "pause_image": pause_ref,
        "versions": versions,
        "order": "warm-up A B; sequential A B; concurrent B A (A = criproxy)",
        "seconds": {name: r.to_json() for name, r in results.items()},
        "ratio_criproxy_over_containerd_lifecycle_median": ratios,
        "goal": {
            "max_ratio": GOAL,
            **{phase: r is not None and r <= GOAL for phase, r in ratios.items()},
        },
        "leak_checks": {
            name: [{"what": c.what, "ok": c.ok, "left": c.left, "note": c.note} for c in cs]
            for name, cs in checks.items()
        },
    }
    return report, clean


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pods", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pods", type=int, default=50, help="pods per phase and runtime")
    parser.add_argument("--concurrency", type=int, default=10, help="workers, concurrent phase")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.concurrency < 1:
        parser.error("--pods and --concurrency must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("pods", args, body)


if __name__ == "__main__":
    sys.exit(main())
