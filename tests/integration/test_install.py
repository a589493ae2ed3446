"""The install an operator does: a wheel built by the standard build backend, installed
into a fresh virtualenv, gives a `criproxy` command that runs (`--version`, `doctor`), with
the generated modules in it; the systemd unit and the kubelet drop-in in deploy/ check."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from criproxy import __version__
from criproxy.config import Config
from tests.integration.helpers import REPO, ContainerdProcess, write_bridge_conflist

DEPLOY = Path(REPO) / "deploy"


def test_the_wheel_installs_into_a_fresh_virtualenv_and_runs(
    tmp_path: Path, shared_containerd: ContainerdProcess
) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("criproxy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True, cwd=tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # outside the checkout: only the installed package can be imported
        return subprocess.run(
            [str(venv / "bin/criproxy"), *args], capture_output=True, text=True, cwd=tmp_path
        )

    assert run("--version").stdout.strip() == f"criproxy {__version__}"
    cni = tmp_path / "net.d"
    write_bridge_conflist(cni)
    config = tmp_path / "criproxy.toml"
    config.write_text(
        f'[containerd]\naddress = "{shared_containerd.socket}"\n[cni]\nconf_dir = "{cni}"\n'
    )
    doctor = run("doctor", "--config", str(config))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "PASS  containerd" in doctor.stdout
    generated = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import criproxy._generated.cri.runtime.v1.api_pb2 as m; print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert generated.stdout.startswith(str(venv))


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "criproxy"  # the unit names /usr/local/bin/criproxy
    unit = tmp_path / "criproxy.service"
    unit.write_text(
        (DEPLOY / "criproxy.service").read_text().replace("/usr/local/bin/criproxy", str(command))
    )
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.read_string(unit.read_text())
    assert parsed["Service"]["KillMode"] == "process", "pods must outlive a restart"
    assert parsed["Service"]["ExecStartPre"].endswith("criproxy doctor")
    assert parsed["Service"]["Restart"] in ("always", "on-failure")


def test_the_kubelet_drop_in_points_at_criproxys_socket() -> None:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.read_string((DEPLOY / "kubelet" / "10-criproxy.conf").read_text())
    endpoint = f"--container-runtime-endpoint=unix://{Config().listen}"
    assert endpoint in parsed["Service"]["Environment"]
    assert parsed["Unit"]["After"] == "criproxy.service"
