"""A containerd, a registry serving the pause image, a CNI network and a criproxy, for pods."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import ContainerdProcess, Criproxy

M = TypeVar("M")

SUBNET = "10.124.0.0/16"
BRIDGE = "cpxpod0"


def write_pod_network(
    conf_dir: Path, data_dir: Path, *, extra: list[dict[str, object]] | None = None
) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    plugins: list[dict[str, object]] = [
        {
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(data_dir),
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    plugins += extra or []
    (conf_dir / "10-pods.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "cpx-pods", "plugins": plugins})
    )


def pod_config(name: str, **kwargs: object) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="test"),
        hostname=name,
        log_directory=f"/tmp/cpx-pod-logs/{name}",
        labels={"app": name},
        annotations={"note": "x"},
    )
    return set_fields(config, kwargs)


def set_fields(message: M, fields: Mapping[str, object]) -> M:
    """Set `fields` on a protobuf message: maps updated, lists extended, messages copied."""
    for key, value in fields.items():
        if isinstance(value, dict):
            getattr(message, key).update(value)
        elif isinstance(value, list):
            getattr(message, key).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(message, key).CopyFrom(value)
        else:
            setattr(message, key, value)
    return message


@dataclass
class PodEnv:
    containerd: ContainerdProcess
    proxy: Criproxy
    cni_data: Path
    created: list[str] = field(default_factory=list)

    def run(self, config: api_pb2.PodSandboxConfig, handler: str = "") -> str:
        pod_id = self.proxy.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=120
        ).pod_sandbox_id
        self.created.append(pod_id)
        return pod_id

    def status(self, pod_id: str, verbose: bool = False) -> api_pb2.PodSandboxStatusResponse:
        return self.proxy.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        )

    def info(self, pod_id: str) -> dict[str, object]:
        return json.loads(self.status(pod_id, verbose=True).info["info"])  # type: ignore[no-any-return]

    def stop(self, pod_id: str) -> None:
        self.proxy.runtime.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
        )

    def remove(self, pod_id: str) -> None:
        self.proxy.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
        )

    def list(self, **filter_fields: object) -> list[api_pb2.PodSandbox]:
        flt = api_pb2.PodSandboxFilter(**filter_fields)  # type: ignore[arg-type]
        return list(
            self.proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=flt)).items
        )

    def allocations(self) -> list[str]:
        """IPs host-local has handed out and not released."""
        root = self.cni_data / "cpx-pods"
        if not root.exists():
            return []
        return [p.name for p in root.iterdir() if p.name[0].isdigit()]

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.containerd.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def netns_files(self) -> list[str]:
        directory = self.proxy.state / "netns"
        return sorted(os.listdir(directory)) if directory.exists() else []

    def mounts_under(self, *paths: Path) -> list[str]:
        text = Path("/proc/self/mountinfo").read_text()
        points = [line.split()[4] for line in text.splitlines()]
        return [p for p in points if any(p.startswith(str(base)) for base in paths)]

    def cleanup(self) -> None:
        for pod_id in self.created:
            with contextlib.suppress(grpc.RpcError):  # best effort at teardown
                self.remove(pod_id)
