"""Checkpoint and restore of a small container: criproxy's CRI calls against containerd's
own task checkpoint and restore, on the same containerd, the same container and CRIU.

containerd 1.6's CRI plugin answers CheckpointContainer with UNIMPLEMENTED, so the
reference is containerd's task API, as `ctr task checkpoint --image-path` and a task
created from CRIU images use it: the dump or restore by the shim, runc and CRIU, with
nothing around it. criproxy's calls do that and their own work besides (the writable
layer's diff, the dumps, the signed archive; the archive's checks, the layer applied).

- checkpoint: CheckpointContainer of a running busybox counter, against containerd's
  `tasks.Checkpoint` of the same container into an image directory (both leave it running);
- restore: CreateContainer from the archive plus StartContainer, against a container record
  made on the same image and a task created from the same CRIU images and started.

    .venv/bin/python -m bench.checkpoint [--runs 7] [--json FILE] [--keep]

Needs CRIU >= 4 (see the README) and the integration tests' requirements.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from google.protobuf import any_pb2

from bench.containers import _image, container_config
from bench.pods import RUN_TIMEOUT, _preflight, _start
from bench.pull import BenchError, run_bench
from criproxy import criu
from criproxy._generated.containerd.runc.options import oci_pb2
from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containerd import Containerd

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.pods import Runtime

COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"
SNAPSHOTTER = "overlayfs"


def _counter(rt: Runtime, image: str, name: str) -> tuple[str, str, api_pb2.PodSandboxConfig]:
    pod = rt.pod_config("ckpt", len(rt.live))
    pod_id = rt.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod), timeout=RUN_TIMEOUT
    ).pod_sandbox_id
    rt.live.add(pod_id)
    config = container_config(pod, image, name)
    del config.command[:]
    config.command.extend(["/bin/sh", "-c", COUNTER])
    cid = rt.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod),
        timeout=RUN_TIMEOUT,
    ).container_id
    rt.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
    time.sleep(0.5)
    return pod_id, cid, pod


def _checkpoint_options(images: Path, work: Path) -> any_pb2.Any:
    opts = oci_pb2.CheckpointOptions(
        exit=False, open_tcp=True, file_locks=True, image_path=str(images), work_path=str(work)
    )
    return any_pb2.Any(
        type_url="containerd.runc.v1.CheckpointOptions", value=opts.SerializeToString()
    )


async def _raw_checkpoint(socket: str, cid: str, images: Path, work: Path) -> float:
    """containerd's own: the dump by the shim, runc and CRIU into `images` (made first)."""
    cd = Containerd(socket, "k8s.io")  # a channel per event loop
    try:
        start = time.perf_counter()
        await cd.tasks.checkpoint(cid, _checkpoint_options(images, work), 120)
        return time.perf_counter() - start
    finally:
        await cd.close()


async def _raw_restore(socket: str, source: str, images: Path, new_id: str, io: Path) -> float:
    """A record on the source's image and spec, and a task restored from `images`."""
    cd = Containerd(socket, "k8s.io")  # a channel per event loop
    try:
        return await _restore_beside(cd, source, images, new_id, io)
    finally:
        await cd.close()


async def _restore_beside(
    cd: Containerd, source: str, images: Path, new_id: str, io: Path
) -> float:
    record = await cd.containers.get(source)
    snapshot = await cd.snapshots.stat(SNAPSHOTTER, source)
    if record is None or snapshot is None or record.runtime_options is None:
        raise BenchError(f"container {source} has no record or snapshot to restore beside")
    mounts = await cd.snapshots.prepare(SNAPSHOTTER, new_id, snapshot.parent)
    spec = copy.deepcopy(record.spec)
    linux = spec.setdefault("linux", {})
    linux["cgroupsPath"] = f"{linux.get('cgroupsPath', '')}-{new_id}"  # not the source's
    await cd.containers.create(
        dataclasses.replace(
            record, id=new_id, labels={}, spec=spec, snapshot_key=new_id, extensions={}
        )
    )
    fifos = [str(io / name) for name in ("out", "err")]
    readers = []
    for fifo in fifos:  # the restored process writes its output somewhere
        os.mkfifo(fifo)
        readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    options = dataclasses.replace(
        record.runtime_options, criu_image_path=str(images), criu_work_path=str(io)
    ).to_any()
    start = time.perf_counter()
    await cd.tasks.create(new_id, mounts, stdout=fifos[0], stderr=fifos[1], options=options)
    await cd.tasks.start(new_id)
    seconds = time.perf_counter() - start
    await cd.tasks.kill_and_delete(new_id, 10)
    await cd.containers.delete(new_id)
    await cd.snapshots.remove(SNAPSHOTTER, new_id)
    for fd in readers:
        os.close(fd)
    return seconds


def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    found = criu.probe("")
    if not found.usable:
        raise BenchError(f"needs a working CRIU >= 4: {found.problem}")
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        rt = runtimes[0]  # criproxy; containerd's CRI has no checkpoints to compare
        image = _image(base, stack)
        rt.prepull(pause_ref)
        rt.prepull(image)
        socket = str(rt.containerd_socket)
        pod_id, cid, _pod = _counter(rt, image, "counter")
        out = base / "out"
        out.mkdir()
        samples: dict[str, list[float]] = {
            k: [] for k in ("cpx_ckpt", "raw_ckpt", "cpx_rst", "raw_rst")
        }
        for i in range(args.runs + 1):  # the first of each is a warm-up
            archive = out / f"c{i}.tar"
            start = time.perf_counter()
            rt.runtime.CheckpointContainer(
                api_pb2.CheckpointContainerRequest(container_id=cid, location=str(archive)),
                timeout=120,
            )
            cpx_ckpt = time.perf_counter() - start
            for made in (out / f"raw{i}", out / f"rawwork{i}", out / f"rawio{i}"):
                made.mkdir()
            raw_ckpt = anyio.run(_raw_checkpoint, socket, cid, out / f"raw{i}", out / f"rawwork{i}")

            new_pod, _new_cid, new_config = _counter(rt, image, "scratch")
            config = container_config(new_config, str(archive), "counter")
            del config.command[:]
            config.command.extend(["/bin/sh", "-c", COUNTER])
            start = time.perf_counter()
            restored = rt.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=new_pod, config=config, sandbox_config=new_config
                ),
                timeout=RUN_TIMEOUT,
            ).container_id
            rt.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=restored), timeout=60
            )
            cpx_rst = time.perf_counter() - start
            raw_rst = anyio.run(
                _raw_restore, socket, cid, out / f"raw{i}", f"rawrestore{i}", out / f"rawio{i}"
            )
            rt.runtime.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=new_pod), timeout=60
            )
            rt.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=new_pod), timeout=60
            )
            rt.live.discard(new_pod)
            if i:
                for key, value in zip(samples, (cpx_ckpt, raw_ckpt, cpx_rst, raw_rst), strict=True):
                    samples[key].append(value)
            print(
                f"run {i or 'warm-up'}: checkpoint {cpx_ckpt * 1000:.0f} ms vs "
                f"{raw_ckpt * 1000:.0f} ms, restore {cpx_rst * 1000:.0f} ms vs "
                f"{raw_rst * 1000:.0f} ms",
                file=sys.stderr,
            )
        rt.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
        )
        rt.live.discard(pod_id)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(
        f"\ncheckpoint and restore of a busybox counter, {args.runs} runs; "
        f"medians (min-max), ms; CRIU {found.version}"
    )
    print(f"{'':<12}{'criproxy CRI':>22}{'containerd task API':>24}{'ratio':>8}")
    for label, cpx, raw in (
        ("checkpoint", "cpx_ckpt", "raw_ckpt"),
        ("restore", "cpx_rst", "raw_rst"),
    ):
        cells = [
            f"{med[k] * 1000:.0f} ({min(samples[k]) * 1000:.0f}-{max(samples[k]) * 1000:.0f})"
            for k in (cpx, raw)
        ]
        print(f"{label:<12}{cells[0]:>22}{cells[1]:>24}{med[cpx] / med[raw]:>8.2f}")
    return {
        "benchmark": "checkpoint",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "criu": found.version,
        "runs": args.runs,
        "samples_s": samples,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkpoint", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs (after one warm-up)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base), True

    return run_bench("checkpoint", args, body)


if __name__ == "__main__":
    sys.exit(main())
