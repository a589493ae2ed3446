"""Containers in pods over a real containerd and runc: helpers for the tests."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import wait_until
from tests.integration.pods_env import PodEnv, pod_config, set_fields

LOG_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)) "
    r"(?P<stream>stdout|stderr) (?P<tag>[FP]) (?P<content>.*)$"
)


@dataclass
class ContainerEnv:
    pods: PodEnv
    image: str
    """A busybox image with the test user, pulled."""
    log_root: Path
    containers: list[str] = field(default_factory=list)

    @property
    def runtime(self):  # type: ignore[no-untyped-def]
        return self.pods.proxy.runtime

    def pod(self, name: str, **kwargs: object) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = pod_config(name, **kwargs)
        config.log_directory = str(self.log_root / name)
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        return self.pods.run(config), config

    def create(
        self,
        pod_id: str,
        pod: api_pb2.PodSandboxConfig,
        name: str,
        *,
        image: str = "",
        command: list[str] | None = None,
        args: list[str] | None = None,
        **fields: object,
    ) -> str:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image or self.image),
            command=command or [],
            args=args or [],
            log_path=f"{name}.log",
        )
        set_fields(config, fields)
        container_id = self.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod
            ),
            timeout=60,
        ).container_id
        self.containers.append(container_id)
        return str(container_id)

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(
            api_pb2.StartContainerRequest(container_id=container_id), timeout=60
        )

    def run(self, pod_id: str, pod: api_pb2.PodSandboxConfig, name: str, **kw: object) -> str:
        container_id = self.create(pod_id, pod, name, **kw)  # type: ignore[arg-type]
        self.start(container_id)
        return container_id

    def status(self, container_id: str, verbose: bool = False) -> api_pb2.ContainerStatusResponse:
        return self.runtime.ContainerStatus(  # type: ignore[no-any-return]
            api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        )

    def info(self, container_id: str) -> dict[str, object]:
        return json.loads(self.status(container_id, verbose=True).info["info"])  # type: ignore[no-any-return]

    def wait_exited(self, container_id: str, timeout: float = 30) -> api_pb2.ContainerStatus:
        wait_until(
            lambda: self.status(container_id).status.state == api_pb2.CONTAINER_EXITED,
            timeout=timeout,
            what=f"container {container_id[:12]} to exit",
        )
        return self.status(container_id).status

    def exec(self, container_id: str, *cmd: str, timeout: int = 30) -> api_pb2.ExecSyncResponse:
        return self.runtime.ExecSync(  # type: ignore[no-any-return]
            api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
            timeout=timeout + 30,
        )

    def stop(self, container_id: str, timeout: int = 0) -> None:
        self.runtime.StopContainer(
            api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout),
            timeout=timeout + 60,
        )

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=container_id), timeout=60
        )

    def log_path(self, container_id: str) -> Path:
        return Path(self.status(container_id).status.log_path)

    def log_entries(self, container_id: str) -> list[tuple[str, str, str]]:
        """(stream, tag, content) of every line of the container's log file."""
        entries = []
        for line in self.log_path(container_id).read_text().splitlines():
            match = LOG_LINE.match(line)
            assert match, f"not a CRI log line: {line!r}"
            entries.append((match["stream"], match["tag"], match["content"]))
        return entries

    def output(self, container_id: str) -> str:
        """The stdout lines of the container's log, joined as the kubelet shows them."""
        out = []
        for stream, tag, content in self.log_entries(container_id):
            if stream == "stdout":
                out.append(content + ("\n" if tag == "F" else ""))
        return "".join(out)

    def cleanup(self) -> None:
        for container_id in self.containers:
            with contextlib.suppress(grpc.RpcError):
                self.remove(container_id)
        self.containers.clear()
