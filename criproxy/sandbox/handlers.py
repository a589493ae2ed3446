"""Runtime handlers (runc, crun, configured ones) and the labels every record of a pod carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy import criu
from criproxy.containerd import RuncOptions
from criproxy.errors import InvalidArgument

if TYPE_CHECKING:
    from criproxy.config import Config, RuntimeHandler
    from criproxy.sandbox.model import PodConfig


def resolve_handler(config: Config, name: str) -> RuntimeHandler:
    """The handler a pod asked for ("" is the default), or INVALID_ARGUMENT listing those
    configured."""
    chosen = name or config.default_runtime_name
    handler = config.runtimes.get(chosen)
    if handler is None:
        known = ", ".join(sorted(config.runtimes))
        raise InvalidArgument(f"unknown runtime handler {name!r} (configured: {known})")
    return handler


def runc_options(handler: RuntimeHandler, config: Config) -> RuncOptions | None:
    """The runc shim's options of a handler; None for any other shim. runc is told the
    CRIU the handler names (`CriuPath`, as containerd's key), else criproxy's (see
    `criu.runc_path`), so that no other CRIU on the shim's PATH is run."""
    if handler.runtime_type != "io.containerd.runc.v2":
        return None
    opts = handler.options
    return RuncOptions(
        binary_name=str(opts.get("BinaryName", "")),
        root=str(opts.get("Root", "")),
        systemd_cgroup=bool(opts.get("SystemdCgroup", config.cgroup_driver == "systemd")),
        no_pivot_root=bool(opts.get("NoPivotRoot", False)),
        no_new_keyring=bool(opts.get("NoNewKeyring", False)),
        shim_cgroup=str(opts.get("ShimCgroup", "")),
        criu_path=str(opts.get("CriuPath", "")) or criu.runc_path(config.checkpoint.criu_path),
    )


def cri_labels(pod: PodConfig) -> dict[str, str]:
    """The pod's labels on every containerd record of it (as containerd's CRI sets them)."""
    return {
        "io.kubernetes.pod.name": pod.metadata.name,
        "io.kubernetes.pod.namespace": pod.metadata.namespace,
        "io.kubernetes.pod.uid": pod.metadata.uid,
    }
