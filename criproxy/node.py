"""The node-wide answers: readiness conditions, runtime handlers, the kubelet's pod CIDR."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy import __version__
from criproxy.errors import CriproxyError
from criproxy.network.cni import NetworkConfig, NetworkNotReady, load_network_config

if TYPE_CHECKING:
    from pathlib import Path

    from criproxy.config import Config
    from criproxy.containerd import Containerd, ContainerdVersion

log = structlog.get_logger("criproxy.node")

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
PING_TIMEOUT = 2.0


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class HandlerFeatures:
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def probe_handler_features(binary: str) -> HandlerFeatures:
    """What a runtime binary can do, from its `features` command (runc >= 1.1), as
    containerd 2.x probes it. Blocking: call from a worker thread."""
    import subprocess

    try:
        out = subprocess.run(
            [binary, "features"], capture_output=True, timeout=10, check=True
        ).stdout
        features = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return HandlerFeatures()
    # rro needs mount_setattr(2) (Linux 5.12) besides the runtime's support.
    rro = "rro" in (features.get("mountOptions") or []) and _kernel_at_least(5, 12)
    return HandlerFeatures(recursive_read_only_mounts=rro, user_namespaces=_userns_possible())


def _userns_possible() -> bool:
    """Pods join a user namespace criproxy makes with util-linux's `unshare`."""
    import shutil

    return os.path.exists("/proc/self/ns/user") and shutil.which("unshare") is not None


@dataclass(frozen=True)
class NodeStatus:
    conditions: tuple[Condition, ...]
    containerd: ContainerdVersion | None
    network: NetworkConfig | None


class Node:
    """Readiness and node-level settings. Holds the pod CIDR the kubelet gives."""

    def __init__(self, config: Config, containerd: Containerd) -> None:
        self.config = config
        self.containerd = containerd
        self._cidr_file: Path = config.state / "pod-cidr"
        self._pod_cidr = ""
        self._features: dict[str, HandlerFeatures] = {}
        with contextlib.suppress(OSError):
            self._pod_cidr = self._cidr_file.read_text().strip()

    @property
    def pod_cidr(self) -> str:
        return self._pod_cidr

    async def set_pod_cidr(self, cidr: str) -> None:
        """Keep the CIDR (persisted, so a restarted criproxy still knows it)."""
        if not cidr or cidr == self._pod_cidr:
            return

        def write() -> None:
            tmp = self._cidr_file.with_suffix(".tmp")
            tmp.write_text(cidr + "\n")
            os.replace(tmp, self._cidr_file)

        await anyio.to_thread.run_sync(write)
        self._pod_cidr = cidr
        log.info("pod CIDR updated", pod_cidr=cidr)

    def forget_handler_features(self) -> None:
        """Probe handlers again on next use (SIGHUP may have changed their binaries)."""
        self._features.clear()

    async def handler_features(self, name: str) -> HandlerFeatures:
        """Probed once per handler (the binaries do not change under a running criproxy)."""
        found = self._features.get(name)
        if found is None:
            handler = self.config.runtimes[name]
            binary = str(handler.options.get("BinaryName") or "runc")
            found = await anyio.to_thread.run_sync(probe_handler_features, binary)
            self._features[name] = found
        return found

    async def status(self) -> NodeStatus:
        runtime, version = await self._runtime_condition()
        network, net_config = await self._network_condition()
        return NodeStatus((runtime, network), version, net_config)

    async def _runtime_condition(self) -> tuple[Condition, ContainerdVersion | None]:
        try:
            version = await self.containerd.version(timeout=PING_TIMEOUT)
        except CriproxyError as err:
            return (
                Condition(
                    RUNTIME_READY,
                    False,
                    "ContainerdUnreachable",
                    f"containerd at {self.containerd.address} does not answer: {err.message}",
                ),
                None,
            )
        return Condition(RUNTIME_READY, True), version

    async def _network_condition(self) -> tuple[Condition, NetworkConfig | None]:
        cni = self.config.cni
        try:
            net = await anyio.to_thread.run_sync(load_network_config, cni.conf_dir, cni.bin_dirs)
        except NetworkNotReady as err:
            return Condition(NETWORK_READY, False, "NetworkPluginNotReady", str(err)), None
        return Condition(NETWORK_READY, True), net

    def verbose_info(self, status: NodeStatus) -> dict[str, str]:
        """Status `verbose` info: JSON values, in the spirit of containerd's CRI keys."""
        containerd = {
            "address": self.containerd.address,
            "namespace": self.containerd.namespace,
            "managed": self.config.managed,
            "version": status.containerd.version if status.containerd else "",
            "revision": status.containerd.revision if status.containerd else "",
        }
        return {
            # containerd's key names too, for tools that read them (kubeadm: sandboxImage)
            "config": json.dumps(
                {**self.config.to_dict(), "sandboxImage": self.config.sandbox_image},
                sort_keys=True,
            ),
            "containerd": json.dumps(containerd, sort_keys=True),
            "cniconfig": json.dumps(
                {"path": str(status.network.path), "config": status.network.raw}
                if status.network
                else {},
                sort_keys=True,
            ),
            "podCIDR": json.dumps(self._pod_cidr),
            "criproxy": json.dumps(
                {
                    "version": __version__,
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                }
            ),
        }
