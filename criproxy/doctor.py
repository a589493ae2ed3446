"""`criproxy doctor`: what this node needs, checked one by one, with the fix for each failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from criproxy import criu, host
from criproxy.containerd import Containerd
from criproxy.containerd.managed import ManagedPaths
from criproxy.errors import CriproxyError
from criproxy.network.cni import NetworkNotReady, load_network_config

if TYPE_CHECKING:
    from criproxy.config import Config

_NEEDED_CONTROLLERS = ("cpu", "memory", "pids")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _binary_version(binary: str) -> tuple[str | None, str]:
    path = shutil.which(binary)
    if path is None:
        return None, ""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return path, out.strip().splitlines()[0] if out.strip() else "version unknown"


def _runtime_checks(config: Config) -> list[Check]:
    checks = []
    for name, handler in sorted(config.runtimes.items()):
        binary = str(handler.options.get("BinaryName") or "runc")
        path, version = _binary_version(binary)
        checks.append(
            Check(
                f"runtime handler {name}",
                path is not None,
                f"{path}: {version}" if path else f"{binary} not found in PATH",
                f"apt-get install {binary}"
                if binary in ("runc", "crun")
                else f"install {binary} or remove [runtimes.{name}] from the config",
            )
        )
    return checks


def _host_checks(config: Config) -> list[Check]:
    checks = [
        Check(
            "root",
            host.is_root(),
            "running as root" if host.is_root() else "not root",
            "run criproxy as root",
        ),
    ]
    cgroups = host.cgroup_info()
    missing = [c for c in _NEEDED_CONTROLLERS if c not in cgroups.controllers]
    checks.append(
        Check(
            "cgroups",
            not missing,
            f"cgroup v{cgroups.version}, controllers: {' '.join(cgroups.controllers)}",
            f"enable the cgroup controllers {', '.join(missing)}",
        )
    )
    if config.containerd.snapshotter == "overlayfs":
        ok = host.overlayfs_available()
        checks.append(
            Check(
                "overlayfs",
                ok,
                "overlay filesystem available" if ok else "overlay not in /proc/filesystems",
                'modprobe overlay, or set [containerd] snapshotter = "native"',
            )
        )
    has_resource = host.has_capability(host.CAP_SYS_RESOURCE)
    restrict = host.restrict_oom_score_adj(config.restrict_oom_score_adj)
    checks.append(
        Check(
            "CAP_SYS_RESOURCE",
            True,
            ("held" if has_resource else "not held: no process here may lower an oom_score_adj")
            + f"; restrict_oom_score_adj = {config.restrict_oom_score_adj!r} -> "
            + ("scores clamped to criproxy's own" if restrict else "scores applied as requested"),
        )
    )
    try:
        net = load_network_config(config.cni.conf_dir, config.cni.bin_dirs)
        checks.append(
            Check(
                "CNI", True, f"{net.path} ({net.name}): " + " ".join(p["type"] for p in net.plugins)
            )
        )
    except NetworkNotReady as err:
        checks.append(
            Check(
                "CNI",
                False,
                str(err),
                "apt-get install containernetworking-plugins and write a conflist "
                f"into {config.cni.conf_dir}",
            )
        )
    return checks


def _criu_check(config: Config) -> Check:
    """CRIU is optional (only checkpoints need it) unless the config names one."""
    configured = config.checkpoint.criu_path
    found = criu.probe(configured)
    if found.usable:
        return Check("CRIU", True, f"{found.path}: {found.version}, `criu check` passes")
    return Check(
        "CRIU",
        not configured,
        f"{found.problem}; CheckpointContainer answers FAILED_PRECONDITION",
        "install CRIU >= 4.0 and set [checkpoint] criu_path to it",
    )


async def _containerd_check(config: Config) -> Check:
    if config.managed:
        paths = ManagedPaths.under(config.root, config.state)
        path, binary_version = await anyio.to_thread.run_sync(
            _binary_version, config.containerd.binary
        )
        if path is None:
            return Check(
                "containerd",
                False,
                f"{config.containerd.binary} not found",
                "apt-get install containerd",
            )
        address = str(paths.socket)
        detail = f"managed mode: {path} ({binary_version})"
    else:
        address = config.containerd.address
        detail = f"at {address}"
    client = Containerd(address, config.containerd.namespace)
    try:
        version = await client.version(timeout=3)
        return Check("containerd", True, f"{detail}: answers, version {version.version}")
    except CriproxyError as err:
        if config.managed:
            return Check(
                "containerd", True, f"{detail}; not running now (criproxy serve starts it)"
            )
        return Check(
            "containerd",
            False,
            f"{detail}: {err.message}",
            "start containerd, or leave [containerd] address empty for managed mode",
        )
    finally:
        await client.close()


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


async def run_doctor(config: Config) -> int:
    checks = [await _containerd_check(config)]
    checks += await anyio.to_thread.run_sync(_runtime_checks, config)
    checks += await anyio.to_thread.run_sync(_host_checks, config)
    checks.append(await anyio.to_thread.run_sync(_criu_check, config))
    print(render(checks))
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed", file=sys.stdout)
    return 1 if failed else 0
