"""PullImage wall time: criproxy against containerd's built-in CRI plugin, in one run.

Both runtimes pull the same multi-layer image from the same local docker-registry over
plain HTTP, each into its own private containerd (same binary, same overlayfs snapshotter,
same download concurrency, same disk). Runs alternate between the two so that machine
noise hits both alike, and after every run the image is removed and the benchmark waits
until its content and snapshots are gone, so every timed pull downloads and unpacks
everything.

    .venv/bin/python -m bench.pull [--layers 5] [--layer-mb 4] [--runs 5] [--json FILE]

Needs root, containerd, runc and docker-registry (the integration tests' requirements).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from criproxy._generated.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from criproxy._generated.containerd.services.snapshots.v1 import (
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from criproxy._generated.containerd.services.version.v1 import version_pb2_grpc
from criproxy._generated.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.integration.helpers import (
    CNI_BIN_DIRS,
    ContainerdProcess,
    Criproxy,
    requirements_missing,
    wait_until,
)
from tests.support.images import busybox_image, file_layer, random_layer
from tests.support.registry import missing_requirements, start_registry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.support.images import Image
    from tests.support.registry import Registry

MIB = 1 << 20
NAMESPACE = "k8s.io"
SNAPSHOTTER = "overlayfs"
MAX_CONCURRENT_DOWNLOADS = 3  # containerd's CRI default; set on both sides explicitly
PULL_TIMEOUT = 600.0
GC_TIMEOUT = 60.0
REPO_NAME = "bench/pull"
TAG = "v1"


class BenchError(RuntimeError):
    """The benchmark cannot go on (a pull failed, GC left content behind, ...)."""


# ---------------------------------------------------------------- the reference runtime


def _has_cap_sys_resource() -> bool:
    """Without it runc cannot lower oom_score_adj, so containerd's CRI must clamp it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool((int(line.split()[1], 16) >> 24) & 1)
    return False


@dataclass
class CriContainerd(ContainerdProcess):
    """containerd with its built-in CRI plugin on a private root, state and socket.

    The config follows /work/shared/conformance/anchor-containerd.sh; nothing points at the
    machine's own containerd paths, and the stream server takes a free port.
    """

    certs_d: Path = Path()
    sandbox_image: str = "registry.k8s.io/pause:3.6"

    def config_text(self) -> str:
        cni_conf = self.base / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        restrict_oom = "false" if _has_cap_sys_resource() else "true"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{self.base}/root"
state = "{self.base}/state"
oom_score = 0

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base}/opt"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_concurrent_downloads = {MAX_CONCURRENT_DOWNLOADS}
  restrict_oom_score_adj = {restrict_oom}
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true

  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIRS[0]}"
    conf_dir = "{cni_conf}"

  [{cri}.containerd]
    snapshotter = "{SNAPSHOTTER}"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        Root = "{self.base}/state/runc"

  [{cri}.registry]
    config_path = "{self.certs_d}"
"""

    def answers(self) -> bool:
        """Its CRI answers (not only containerd): the plugin has loaded."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"containerd exited with {self.proc.returncode}:\n{tail(self.log)}")
        if not self.socket.exists():
            return False
        try:
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                api_pb2_grpc.RuntimeServiceStub(channel).Version(
                    api_pb2.VersionRequest(), timeout=1
                )
        except grpc.RpcError:
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        super().start(timeout)


# ---------------------------------------------------------------- one runtime under test


@dataclass
class Endpoint:
    """A CRI socket and the containerd beneath it, as gRPC stubs (shared by the benchmarks)."""

    name: str
    cri_socket: Path
    containerd_socket: Path
    log: Path
    _channels: list[grpc.Channel] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        cri = grpc.insecure_channel(f"unix://{self.cri_socket}")
        self.containerd_channel = grpc.insecure_channel(f"unix://{self.containerd_socket}")
        self._channels = [cri, self.containerd_channel]
        self.images = api_pb2_grpc.ImageServiceStub(cri)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(cri)
        self.version = version_pb2_grpc.VersionStub(self.containerd_channel)

    _md = (("containerd-namespace", NAMESPACE),)

    def describe(self) -> str:
        cri = self.runtime.Version(api_pb2.VersionRequest(), timeout=10)
        cd = self.version.Version(empty_pb2.Empty(), timeout=10)
        return f"{cri.runtime_name} {cri.runtime_version} on containerd {cd.version}"

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@dataclass
class Runtime(Endpoint):
    """One pulling runtime, whose stores prove each run starts empty."""

    samples: list[float] = field(default_factory=list)
    pids: tuple[int, ...] = ()
    """The runtime's processes (criproxy and its containerd, or containerd with CRI)."""
    keeps_layers: bool = True
    cpu: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.content = content_pb2_grpc.ContentStub(self.containerd_channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.containerd_channel)

    def pull(self, ref: str) -> tuple[float, str]:
        """One PullImage, timed by the wall clock around the RPC; returns (seconds, id).
        The CPU its processes spent meanwhile goes to `last_cpu`."""
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        cpu_before = [cpu_seconds((pid,)) for pid in self.pids]
        start = time.perf_counter()
        try:
            response = self.images.PullImage(request, timeout=PULL_TIMEOUT)
        except grpc.RpcError as err:
            raise BenchError(
                f"{self.name}: PullImage({ref}) failed: {err.code().name}: {err.details()}\n"
                f"--- tail of {self.log}:\n{tail(self.log)}"
            ) from err
        seconds = time.perf_counter() - start
        self.last_cpus = [
            cpu_seconds((pid,)) - before for pid, before in zip(self.pids, cpu_before, strict=True)
        ]
        self.last_cpu = sum(self.last_cpus)
        return seconds, response.image_ref

    def blobs(self) -> set[str]:
        stream = self.content.List(content_pb2.ListContentRequest(), metadata=self._md)
        return {info.digest for response in stream for info in response.info}

    def committed_snapshots(self) -> set[str]:
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=SNAPSHOTTER)
        stream = self.snapshots.List(request, metadata=self._md)
        return {info.name for response in stream for info in response.info}

    def check_pulled(self, image: Image, image_id: str) -> None:
        """Both runtimes must have done the same work: every layer unpacked, and every blob
        stored that the runtime keeps (criproxy discards unpacked layers by default)."""
        if image_id != image.id:
            raise BenchError(f"{self.name}: PullImage returned {image_id}, want {image.id}")
        expected = set(image.content)
        if not self.keeps_layers:
            expected -= {d.digest for d in image.layer_descriptors}
        missing_blobs = expected - self.blobs()
        missing_snaps = set(image.chain_ids) - self.committed_snapshots()
        if missing_blobs or missing_snaps:
            raise BenchError(
                f"{self.name}: after the pull, missing blobs {sorted(missing_blobs)} "
                f"and snapshots {sorted(missing_snaps)}"
            )

    def remove_and_wait(self, image_id: str) -> None:
        """RemoveImage, then wait until GC has emptied the namespace's content and snapshots."""
        request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id))
        try:
            self.images.RemoveImage(request, timeout=60)
        except grpc.RpcError as err:
            raise BenchError(
                f"{self.name}: RemoveImage failed: {err.code().name}: {err.details()}\n"
                f"--- tail of {self.log}:\n{tail(self.log)}"
            ) from err
        left: tuple[set[str], set[str]] = (set(), set())

        def empty() -> bool:
            nonlocal left
            left = (self.blobs(), self.committed_snapshots())
            return not left[0] and not left[1]

        try:
            wait_until(empty, GC_TIMEOUT, interval=0.05)
        except TimeoutError as err:
            raise BenchError(
                f"{self.name}: {GC_TIMEOUT:.0f}s after RemoveImage, containerd still holds "
                f"blobs {sorted(left[0])} and snapshots {sorted(left[1])}"
            ) from err


# ---------------------------------------------------------------- helpers


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def write_hosts(certs_d: Path, registry: Registry) -> None:
    """`certs.d/<host:port>/hosts.toml` in containerd's format, read by both runtimes.

    The `[host]` table is required by containerd 1.6.20: without one it logs "invalid
    `host` tree" and falls back to its built-in loopback default instead of this file.
    """
    directory = certs_d / registry.host
    directory.mkdir(parents=True, exist_ok=True)
    ca = f'  ca = "{registry.ca_path}"\n' if registry.ca_path else ""
    (directory / "hosts.toml").write_text(
        f'server = "{registry.url}"\n\n'
        f'[host."{registry.url}"]\n  capabilities = ["pull", "resolve"]\n{ca}'
    )


def check_hosts_used(log: Path) -> None:
    """A hosts.toml containerd could not read means it pulled by its defaults, not ours."""
    bad = [line for line in log.read_text(errors="replace").splitlines() if "hosts.toml" in line]
    if bad:
        raise BenchError(f"containerd did not use the hosts.toml ({log}):\n" + "\n".join(bad[:3]))


def unmount_below(base: Path) -> None:
    """Lazily unmount anything a crashed run left under `base`, so rmtree cannot hit it."""
    prefix = str(base) + "/"
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for mountpoint in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes so far (/proc/PID/stat, clock ticks)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(samples),
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
    }


def build_image(layers: int, layer_mb: int, files: int = 0) -> Image:
    """busybox plus `layers` layers: one incompressible file of `layer_mb` MiB each (so the
    compressed size is the stated one), or `files` small files each (a source tree's
    shape: 64 B to 8 KiB of text-like bytes, 100 to a directory)."""
    if not files:
        extra = [random_layer(layer_mb * MIB, seed=f"bench-pull-{i}") for i in range(layers)]
        return busybox_image(extra_layers=extra)
    words = [f"w{n:x}".encode() for n in range(4096)]
    extra = []
    for i in range(layers):
        rng = random.Random(f"bench-pull-files-{i}")
        contents = {}
        for f in range(files):
            size = int(64 * 2 ** (rng.random() * 7))
            text = b" ".join(rng.choices(words, k=size // 4 + 1))[:size]
            contents[f"/src{i}/d{f // 100:03d}/f{f:05d}.txt"] = text
        extra.append(file_layer(contents, created_by=f"{files} files, layer {i}"))
    return busybox_image(extra_layers=extra)


# ---------------------------------------------------------------- the benchmark


def report(
    args: argparse.Namespace,
    size_line: str,
    stats: dict[str, dict[str, float | int]],
    cpu: dict[str, float],
    versions: dict[str, str],
) -> tuple[float, float]:
    """Print the table; the wall-time and CPU ratios."""
    ratio = stats["criproxy"]["median"] / stats["containerd"]["median"]
    cpu_ratio = cpu["criproxy"] / cpu["containerd"]
    print()
    print(size_line)
    transport = "TLS" if args.tls else "plain HTTP"
    print(
        f"PullImage from a local registry ({transport}), {args.runs} runs each, alternating, "
        f"after one warm-up each; max_concurrent_downloads={MAX_CONCURRENT_DOWNLOADS}"
    )
    print(f"{'runtime':<12}{'n':>4}{'min s':>10}{'median s':>10}{'max s':>10}{'CPU-s':>8}  version")
    for name, r in stats.items():
        print(
            f"{name:<12}{r['n']:>4}{r['min']:>10.3f}{r['median']:>10.3f}{r['max']:>10.3f}"
            f"{cpu[name]:>8.2f}  {versions[name]}"
        )
    print(f"ratio criproxy/containerd (median) = {ratio:.2f}  (< 1: criproxy is faster)")
    print(f"CPU ratio (criproxy + its containerd / containerd with CRI, median) = {cpu_ratio:.2f}")
    return ratio, cpu_ratio


def run(args: argparse.Namespace, base: Path) -> dict[str, object]:
    image = build_image(args.layers, args.layer_mb, args.files)
    layer_bytes = sum(d.size for d in image.layer_descriptors)
    shape = f"{args.files} small files" if args.files else f"{args.layer_mb} MiB random"
    size_line = (
        f"image: busybox base + {args.layers} layers of {shape} "
        f"({len(image.layers)} layers, compressed total {layer_bytes / MIB:.1f} MiB, "
        f"{image.content_size / MIB:.1f} MiB with manifest and config)"
    )
    print(size_line, file=sys.stderr)

    registry: Registry | None = None
    plain = ContainerdProcess(base / "cd-criproxy")
    proxy: Criproxy | None = None
    reference = CriContainerd(base / "cd-cri", certs_d=base / "certs.d")
    runtimes: list[Runtime] = []
    try:
        registry = start_registry(base / "registry", tls=args.tls)
        registry.push(REPO_NAME, image, TAG)
        ref = registry.reference(REPO_NAME, TAG)
        write_hosts(base / "certs.d", registry)

        plain.start()
        proxy = Criproxy(
            base / "criproxy",
            containerd=plain.socket,
            config={
                "max_concurrent_downloads": MAX_CONCURRENT_DOWNLOADS,
                "registry": {"config_path": str(base / "certs.d")},
            },
        )
        proxy.start()
        reference.start()
        assert proxy.proc is not None and plain.proc is not None
        assert reference.proc is not None
        runtimes = [
            Runtime(
                "criproxy",
                proxy.socket,
                plain.socket,
                proxy.log,
                pids=(proxy.proc.pid, plain.proc.pid),
                keeps_layers=False,
            ),
            Runtime(
                "containerd",
                reference.socket,
                reference.socket,
                reference.log,
                pids=(reference.proc.pid,),
            ),
        ]
        versions = {rt.name: rt.describe() for rt in runtimes}
        for rt in runtimes:
            print(f"{rt.name}: {versions[rt.name]}", file=sys.stderr)

        for rt in runtimes:  # warm-up: imports, connections, page cache; not counted
            seconds, image_id = rt.pull(ref)
            rt.check_pulled(image, image_id)
            rt.remove_and_wait(image_id)
            print(f"warm-up {rt.name}: {seconds:.3f}s", file=sys.stderr)
        check_hosts_used(reference.log)
        for i in range(args.runs):
            for rt in runtimes:  # A B A B ...: both share the machine's noise
                seconds, image_id = rt.pull(ref)
                rt.samples.append(seconds)
                rt.cpu.append(rt.last_cpu)
                rt.check_pulled(image, image_id)
                rt.remove_and_wait(image_id)
                print(
                    f"run {i + 1}/{args.runs} {rt.name}: {seconds:.3f}s, "
                    f"{rt.last_cpu:.2f} CPU-s ({' + '.join(f'{c:.2f}' for c in rt.last_cpus)})",
                    file=sys.stderr,
                )
    finally:
        for rt in runtimes:
            rt.close()
        if proxy is not None:
            proxy.stop()
        reference.stop()
        plain.stop()
        if registry is not None:
            registry.stop()

    stats = {rt.name: summary(rt.samples) for rt in runtimes}
    cpu = {rt.name: statistics.median(rt.cpu) for rt in runtimes}
    ratio, cpu_ratio = report(args, size_line, stats, cpu, versions)
    return {
        "benchmark": "pull",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "image": {
            "base": "busybox",
            "random_layers": args.layers,
            "layer_mib": args.layer_mb,
            "layers_total": len(image.layers),
            "compressed_layer_bytes": layer_bytes,
            "content_bytes": image.content_size,
        },
        "runs": args.runs,
        "tls": args.tls,
        "files_per_layer": args.files,
        "cpu_seconds_median": cpu,
        "cpu_ratio_criproxy_over_containerd_median": cpu_ratio,
        "max_concurrent_downloads": MAX_CONCURRENT_DOWNLOADS,
        "versions": versions,
        "seconds": {rt.name: {**stats[rt.name], "samples": rt.samples} for rt in runtimes},
        "ratio_criproxy_over_containerd_median": ratio,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pull", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--layers", type=int, default=5, help="random layers on busybox")
    parser.add_argument("--layer-mb", type=int, default=4, help="MiB per random layer")
    parser.add_argument("--runs", type=int, default=5, help="timed pulls per runtime")
    parser.add_argument(
        "--files", type=int, default=0, help="small files per layer instead of one random file"
    )
    parser.add_argument("--tls", action="store_true", help="the registry speaks TLS")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if args.layers < 0 or args.layer_mb < 1 or args.runs < 1 or args.files < 0:
        parser.error("--layers must be >= 0, --layer-mb and --runs >= 1")
    return args


def run_bench(
    name: str, args: argparse.Namespace, body: Callable[[Path], tuple[dict[str, Any], bool]]
) -> int:
    """A benchmark's frame: requirements, a temp dir (kept with --keep), the JSON report.

    0 when `body` reports a clean run, 1 when it failed or left something behind, 2 when the
    machine lacks what the benchmarks need."""
    missing = requirements_missing() or missing_requirements()
    if missing:
        print(f"bench.{name}: cannot run: {missing}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix=f"criproxy-bench-{name}-"))
    try:
        report, clean = body(base)
    except BenchError as err:
        print(f"bench.{name}: {err}", file=sys.stderr)
        return 1
    finally:
        unmount_below(base)
        if args.keep:
            print(f"bench.{name}: kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("pull", args, lambda base: (run(args, base), True))


if __name__ == "__main__":
    sys.exit(main())
