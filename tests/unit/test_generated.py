"""The generated protobuf modules are current with protos/ (regenerate: scripts/genprotos.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_modules_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "genprotos.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        "criproxy/_generated is stale; run scripts/genprotos.py\n" + result.stdout + result.stderr
    )


def test_both_services_and_their_43_rpcs_are_generated() -> None:
    from criproxy._generated.cri.runtime.v1 import api_pb2

    services = api_pb2.DESCRIPTOR.services_by_name
    assert len(services["RuntimeService"].methods) == 37
    assert len(services["ImageService"].methods) == 6
    streaming = {m.name for s in services.values() for m in s.methods if m.server_streaming}
    assert streaming == {
        "StreamPodSandboxes",
        "StreamContainers",
        "StreamContainerStats",
        "StreamPodSandboxStats",
        "StreamPodSandboxMetrics",
        "StreamImages",
        "GetContainerEvents",
    }
