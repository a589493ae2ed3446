"""`criproxy doctor` on this node, against a real containerd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.helpers import REPO, ContainerdProcess, write_bridge_conflist


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "criproxy", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def config_with_cni(tmp: Path) -> Path:
    write_bridge_conflist(tmp / "net.d")
    path = tmp / "c.toml"
    path.write_text(f'[cni]\nconf_dir = "{tmp / "net.d"}"\nbin_dirs = ["/usr/lib/cni"]\n')
    return path


def test_doctor_passes_on_a_ready_node(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    result = doctor(
        "--config", str(config_with_cni(short_tmp)), "--containerd", str(shared_containerd.socket)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    for name in (
        "containerd",
        "runtime handler runc",
        "runtime handler crun",
        "CNI",
        "cgroups",
        "CAP_SYS_RESOURCE",
        "root",
    ):
        assert f"PASS  {name}" in result.stdout


def test_doctor_fails_with_a_fix_for_each_failure(short_tmp: Path) -> None:
    config = short_tmp / "c.toml"
    config.write_text(
        f'[cni]\nconf_dir = "{short_tmp / "empty"}"\n'
        '[runtimes.kata]\nruntime_type = "io.containerd.kata.v2"\n'
        '[runtimes.kata.options]\nBinaryName = "kata-runtime-missing"\n'
    )
    result = doctor("--config", str(config), "--containerd", str(short_tmp / "nothing.sock"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    for name in ("containerd", "runtime handler kata", "CNI"):
        index = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL  {name}"))
        assert "fix:" in lines[index + 1]
