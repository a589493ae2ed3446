"""docker-compose.yml is a valid compose file with both services as documented."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.helpers import REPO

COMPOSE = shutil.which("docker-compose")


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (scripts/test installs it)"
)
def test_compose_file_validates_and_runs_both_services_privileged() -> None:
    check = compose("config", "-q")
    assert check.returncode == 0, check.stderr
    assert check.stderr.strip() == "", f"compose ignored something: {check.stderr}"
    assert compose("config", "--services").stdout.split() == ["containerd", "criproxy"]
    rendered = compose("config").stdout
    assert rendered.count("privileged: true") == 2
    for shared in ("/run/containerd:/run/containerd", "/var/lib/criproxy:/var/lib/criproxy"):
        assert rendered.count(shared) == 2
    assert "/run/containerd/containerd.sock" in rendered
