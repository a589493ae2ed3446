"""Footprint: memory and idle CPU of criproxy with its containerd, against containerd with
its CRI plugin, idle and with `--pods` running pods each.

On `bench.pods`'s setup (private containerds, each runtime's own pod network):

- RSS (VmRSS) of the runtime's own long-lived processes (criproxy and its containerd;
  containerd) with no pods, after one warm-up pod came and went;
- the same with `--pods` pods running (pause containers; the shims are the same work for
  both and are not counted);
- CPU seconds those processes spend over `--idle` seconds with the pods running and no
  client calling, as a node between kubelet relists.

    .venv/bin/python -m bench.footprint [--pods 100] [--idle 60] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.containers import remove_pod, run_pod
from bench.pods import _leak_checks, _own_cpu_s, _preflight, _start, fmt, ratio
from bench.pull import run_bench
from criproxy.logs import configure

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.pods import Runtime


def rss_mib(pids: Sequence[int]) -> float:
    """The summed VmRSS of these processes, MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def run(args: argparse.Namespace, base: Path) -> tuple[dict[str, object], bool]:
    with contextlib.ExitStack() as stack:
        runtimes, pause_ref = _start(base, stack)
        for rt in runtimes:
            rt.prepull(pause_ref)
            pod_id, _, _ = run_pod(rt, "warmup", 0)  # imports, pools, CNI: not counted
            remove_pod(rt, pod_id)
        time.sleep(2)
        idle = {rt.name: rss_mib(rt.pids) for rt in runtimes}
        pods: dict[str, list[str]] = {rt.name: [] for rt in runtimes}
        for i in range(args.pods):
            for rt in runtimes:
                pods[rt.name].append(run_pod(rt, "footprint", i)[0])
            if (i + 1) % 25 == 0:
                print(f"footprint: {i + 1}/{args.pods} pods per runtime", file=sys.stderr)
        time.sleep(2)
        loaded = {rt.name: rss_mib(rt.pids) for rt in runtimes}
        before = {rt.name: _own_cpu_s(rt.pids) for rt in runtimes}
        time.sleep(args.idle)
        cpu = {rt.name: _own_cpu_s(rt.pids) - before[rt.name] for rt in runtimes}
        for rt in runtimes:
            for pod_id in pods[rt.name]:
                remove_pod(rt, pod_id)
        checks = _leak_checks(runtimes)
    lines = [_line(runtimes, what, values) for what, values in _rows(args, idle, loaded, cpu)]
    for name, cs in checks.items():
        for c in cs:
            lines.append(f"  {name:<11} {c.what:<40} {'ok' if c.ok else 'LEFT: ' + str(c.left)}")
    print("\n".join(lines))
    report: dict[str, Any] = {
        "benchmark": "footprint",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "pods": args.pods,
        "idle_seconds": args.idle,
        "rss_idle_mib": idle,
        "rss_with_pods_mib": loaded,
        "idle_cpu_s": cpu,
    }
    return report, all(c.ok for cs in checks.values() for c in cs)


def _rows(
    args: argparse.Namespace,
    idle: dict[str, float],
    loaded: dict[str, float],
    cpu: dict[str, float],
) -> list[tuple[str, dict[str, float]]]:
    return [
        ("RSS with no pods, MiB", idle),
        (f"RSS with {args.pods} pods, MiB", loaded),
        (f"CPU over {args.idle:g} s idle with {args.pods} pods, s", cpu),
    ]


def _line(runtimes: Sequence[Runtime], what: str, values: dict[str, float]) -> str:
    cpx, ctd = runtimes[0].name, runtimes[1].name
    return (
        f"{what:<42} {cpx} {fmt(values[cpx], '.2f')}, {ctd} {fmt(values[ctd], '.2f')}; "
        f"ratio {fmt(ratio(values[cpx], values[ctd]), '.2f')}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.footprint", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pods", type=int, default=100, help="running pods per runtime")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.idle <= 0:
        parser.error("--pods must be >= 1 and --idle > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure("warning")

    def body(base: Path) -> tuple[dict[str, Any], bool]:
        _preflight()
        return run(args, base)

    return run_bench("footprint", args, body)


if __name__ == "__main__":
    sys.exit(main())
