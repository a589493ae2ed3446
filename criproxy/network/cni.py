"""CNI network configuration: which config applies and whether the node's network is ready."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass(frozen=True)
class NetworkConfig:
    """The lexically first usable CNI config in the conf dir (as the kubelet's runtimes pick)."""

    path: Path
    name: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any]


class NetworkNotReady(Exception):
    """Why the node has no usable pod network; the message goes into Status."""


def _load(path: Path) -> NetworkConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NetworkNotReady(f"CNI config {path} cannot be read: {err}") from None
    if not isinstance(raw, dict):
        raise NetworkNotReady(f"CNI config {path} is not a JSON object")
    if path.suffix == ".conflist" or "plugins" in raw:
        plugins = raw.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise NetworkNotReady(f"CNI config list {path} has no plugins")
    else:
        plugins = [raw]
    if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise NetworkNotReady(f"CNI config {path} has a plugin without a 'type'")
    return NetworkConfig(path, str(raw.get("name", "")), tuple(plugins), raw)


def load_network_config(conf_dir: str, bin_dirs: tuple[str, ...]) -> NetworkConfig:
    """Load the first config of the conf dir and check that its plugin binaries exist."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(_EXTENSIONS))
    except FileNotFoundError:
        raise NetworkNotReady(f"no CNI config: directory {conf_dir} does not exist") from None
    except OSError as err:
        raise NetworkNotReady(f"CNI config directory {conf_dir} cannot be read: {err}") from None
    if not names:
        raise NetworkNotReady(f"no CNI config: no .conf/.conflist/.json file in {conf_dir}")
    config = _load(Path(conf_dir) / names[0])
    for plugin in config.plugins:
        kind = plugin["type"]
        if not any(os.access(Path(d) / kind, os.X_OK) for d in bin_dirs):
            raise NetworkNotReady(
                f"CNI plugin {kind!r} of {config.path} not found in {':'.join(bin_dirs)}"
            )
    return config
