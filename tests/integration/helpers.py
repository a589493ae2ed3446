"""Real components for integration tests: a private containerd and a criproxy process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from criproxy._generated.containerd.services.version.v1 import version_pb2_grpc
from criproxy._generated.cri.runtime.v1 import api_pb2, api_pb2_grpc

CNI_BIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]
REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def containerd_answers(socket: Path, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            version_pb2_grpc.VersionStub(channel).Version(empty_pb2.Empty(), timeout=timeout)
    except grpc.RpcError:
        return False
    return True


@dataclass
class ContainerdProcess:
    """containerd on a private root, state and socket, with its CRI plugin off."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "state" / "c.sock"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def config_text(self) -> str:
        return (
            "version = 2\n"
            f'root = "{self.base}/root"\nstate = "{self.base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.base}/opt"\n'
        )

    def answers(self) -> bool:
        return containerd_answers(self.socket)

    def start(self, timeout: float = 30) -> None:
        (self.base / "state").mkdir(parents=True, exist_ok=True)
        config = self.base / "containerd.toml"
        config.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.answers, timeout, what=f"containerd on {self.socket}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Criproxy:
    """A `criproxy serve` process with its own dirs and config, and CRI stubs to call it."""

    base: Path
    containerd: Path | None = None
    config: dict[str, object] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.base / "cri.sock"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "run"

    @property
    def log(self) -> Path:
        return self.base / "criproxy.log"

    @property
    def cni_dir(self) -> Path:
        return self.base / "net.d"

    def write_config(self) -> Path:
        self.cni_dir.mkdir(parents=True, exist_ok=True)
        merged: dict[str, object] = {
            "cni": {"conf_dir": str(self.cni_dir), "bin_dirs": CNI_BIN_DIRS},
            "metrics": {"address": ""},  # not the default port: tests run several at once
            "cdi_spec_dirs": [str(self.base / "cdi")],  # never the host's
            "nri": {  # never the host's
                "socket_path": str(self.base / "nri.sock"),
                "plugin_path": str(self.base / "nri-plugins"),
                "plugin_config_path": str(self.base / "nri-conf"),
            },
        }
        merged.update(self.config)
        path = self.base / "criproxy.toml"
        path.write_text(_toml(merged))
        return path

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "criproxy",
            "serve",
            "--config",
            str(self.write_config()),
            "--listen",
            str(self.socket),
            "--root",
            str(self.root),
            "--state",
            str(self.state),
        ]
        if self.containerd is not None:
            args += ["--containerd", str(self.containerd)]
        return args + self.extra_args

    def start(self, wait: bool = True) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            wait_until(self._answers, 60, what=f"criproxy on {self.socket}; log:\n{self.tail()}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"criproxy exited with {self.proc.returncode}:\n{self.tail()}")
        if not self.socket.exists():
            return False
        try:
            self.runtime.Version(api_pb2.VersionRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return True

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        return ""

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self._channel

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def write_bridge_conflist(directory: Path, name: str = "10-test.conflist") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "criproxy-test",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cpxtest0",
                        "isGateway": True,
                        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/16"}]]},
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }
        )
    )
    return path


def _toml(data: dict[str, object], prefix: str = "") -> str:
    """Just enough TOML for test configs: scalars, lists of strings, nested tables."""
    lines, tables = [], []
    for raw_key, value in data.items():
        key = raw_key if re.fullmatch(r"[A-Za-z0-9_-]+", raw_key) else json.dumps(raw_key)
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"\n[{name}]\n" + _toml(table, f"{name}.")
    return out


def requirements_missing() -> str:
    """Why integration tests cannot run here, or '' when they can."""
    if os.geteuid() != 0:
        return "integration tests need root (containerd, runc, namespaces)"
    for binary in ("containerd", "runc", "containerd-shim-runc-v2"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (scripts/test installs it)"
    return ""
