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


def test_pip_install_into_a_fresh_virtualenv_gives_a_working_command(
    tmp_path: Path, shared_containerd: ContainerdProcess
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], check=True)
    # the README's command: pip builds a wheel with the standard build backend, isolated
    src = tmp_path / "src"  # a copy: the build leaves nothing in the checkout
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "*_cache", "build", "dist")
    )
    subprocess.run([venv / "bin/pip", "install", "-q", str(src)], check=True, cwd=tmp_path)

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


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_the_kubelet_drop_in_verifies_and_points_at_criproxys_socket(tmp_path: Path) -> None:
    drop_in = (DEPLOY / "kubelet" / "20-criproxy.conf").read_text()
    (tmp_path / "kubelet.service").write_text(
        "[Unit]\nDescription=kubelet\n[Service]\nExecStart=/usr/bin/true\n"
    )
    (tmp_path / "kubelet.service.d").mkdir()
    # the kubelet binary is not installed here: a stand-in, for verify's executable check
    stand_in = drop_in.replace("ExecStart=/usr/bin/kubelet ", "ExecStart=/usr/bin/true ")
    (tmp_path / "kubelet.service.d" / "20-criproxy.conf").write_text(stand_in)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "kubelet.service")],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )
    assert verified.returncode == 0, verified.stderr
    exec_lines = [line for line in drop_in.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines[0] == "ExecStart=", "kubeadm's command line is replaced, not added to"
    endpoint = f"--container-runtime-endpoint=unix://{Config().listen}"
    assert exec_lines[-1].endswith(endpoint), "the endpoint last: it wins over kubeadm's"
    assert "$KUBELET_EXTRA_ARGS" in exec_lines[-1]
