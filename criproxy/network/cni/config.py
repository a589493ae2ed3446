"""Which CNI config applies, whether the node's network is ready, and the network list and
plugin stdin a call runs with, as libcni builds them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

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


def version_tuple(version: str) -> tuple[int, ...]:
    """A CNI version as a comparable tuple; empty means 0.1.0, as the spec says."""
    if not version:
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid CNI version {version!r}")
    return tuple(int(p) for p in parts)


# --- the network list one call runs ----------------------------------------------------------

VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
"""libcni's rule for network names and container ids."""
_MAX_VERSION = (1, 1, 0)


@dataclass(frozen=True)
class Network:
    """One network list to run: the pod's conflist, or the loopback network."""

    name: str
    version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False


LOOPBACK = Network("cni-loopback", "0.3.1", (MappingProxyType({"type": "loopback"}),))
"""go-cni's `WithLoNetwork`: a network of its own that brings `lo` up in the pod's netns."""


def build_plugin_config(
    network: Network,
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
) -> dict[str, Any]:
    """The stdin of one plugin, as libcni's `buildOneConfig`: the list's name and cniVersion,
    the previous result, and `runtimeConfig` with only the capabilities the plugin declares."""
    conf = dict(plugin)
    conf["name"] = network.name
    conf["cniVersion"] = network.version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    declared = plugin.get("capabilities")
    if isinstance(declared, dict):
        runtime = {
            cap: capability_args[cap]
            for cap, enabled in declared.items()
            if enabled is True and cap in capability_args
        }
        if runtime:
            conf["runtimeConfig"] = runtime
    return conf


def _pick_version(raw: Mapping[str, Any], path: Path) -> str:
    """The config's cniVersion, or the highest supported of `cniVersions` (CNI 1.1)."""
    versions = []
    for candidate in [raw.get("cniVersion", ""), *(raw.get("cniVersions") or [])]:
        if not isinstance(candidate, str):
            raise NetworkNotReady(f"CNI config {path} has an invalid cniVersion {candidate!r}")
        try:
            parsed = version_tuple(candidate)
        except ValueError as err:
            raise NetworkNotReady(f"CNI config {path}: {err}") from None
        if candidate and parsed <= _MAX_VERSION:
            versions.append((parsed, candidate))
    return max(versions)[1] if versions else str(raw.get("cniVersion", ""))


def network_of(config: NetworkConfig) -> Network:
    if not VALID_NAME.fullmatch(config.name):
        raise NetworkNotReady(
            f"CNI config {config.path} has an invalid network name {config.name!r}"
        )
    return Network(
        name=config.name,
        version=_pick_version(config.raw, config.path),
        plugins=config.plugins,
        disable_check=config.raw.get("disableCheck") is True,
    )
