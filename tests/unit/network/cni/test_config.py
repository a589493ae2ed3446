from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from criproxy.network.cni.config import (
    LOOPBACK,
    Network,
    NetworkNotReady,
    build_plugin_config,
    load_network_config,
)

NET = Network("podnet", "1.0.0", ({"type": "bridge"},))


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for name in ("bridge", "portmap"):
        (path / name).write_text("#!/bin/sh\n")
        os.chmod(path / name, 0o755)
    return path


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_lexically_first_config_wins(tmp_path: Path, bin_dir: Path) -> None:
    write(tmp_path / "net" / "20-b.conflist", {"name": "b", "plugins": [{"type": "bridge"}]})
    write(tmp_path / "net" / "10-a.conflist", {"name": "a", "plugins": [{"type": "portmap"}]})
    (tmp_path / "net" / "00-ignored.txt").write_text("x")
    config = load_network_config(str(tmp_path / "net"), (str(bin_dir),))
    assert config.name == "a"
    assert [p["type"] for p in config.plugins] == ["portmap"]


def test_single_plugin_conf_is_a_one_plugin_chain(tmp_path: Path, bin_dir: Path) -> None:
    write(tmp_path / "net" / "10.conf", {"name": "one", "type": "bridge"})
    config = load_network_config(str(tmp_path / "net"), (str(bin_dir),))
    assert [p["type"] for p in config.plugins] == ["bridge"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no .conf/.conflist/.json file"),
        ({"10.conflist": {"name": "x", "plugins": []}}, "has no plugins"),
        ({"10.conflist": {"name": "x", "plugins": [{"type": "macvlan"}]}}, "'macvlan'"),
        ({"10.conf": {"name": "x"}}, "without a 'type'"),
    ],
)
def test_not_ready_says_why(
    tmp_path: Path, bin_dir: Path, files: dict[str, object], message: str
) -> None:
    (tmp_path / "net").mkdir()
    for name, data in files.items():
        write(tmp_path / "net" / name, data)
    with pytest.raises(NetworkNotReady, match=message):
        load_network_config(str(tmp_path / "net"), (str(bin_dir),))


def test_missing_dir_and_broken_json(tmp_path: Path, bin_dir: Path) -> None:
    with pytest.raises(NetworkNotReady, match="does not exist"):
        load_network_config(str(tmp_path / "none"), (str(bin_dir),))
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "10.conflist").write_text("{")
    with pytest.raises(NetworkNotReady, match="cannot be read"):
        load_network_config(str(tmp_path / "net"), (str(bin_dir),))


def test_name_and_version_of_the_list_override_the_plugins_own() -> None:
    plugin = {"type": "bridge", "name": "other", "cniVersion": "0.3.1", "bridge": "cni0"}
    conf = build_plugin_config(NET, plugin, None, {})
    assert conf == {"type": "bridge", "name": "podnet", "cniVersion": "1.0.0", "bridge": "cni0"}
    assert plugin["name"] == "other"  # the loaded config is not mutated


def test_prev_result_is_injected_only_when_there_is_one() -> None:
    prev = {"cniVersion": "1.0.0", "ips": []}
    assert build_plugin_config(NET, {"type": "x"}, prev, {})["prevResult"] == prev
    assert "prevResult" not in build_plugin_config(NET, {"type": "x"}, None, {})


def test_runtime_config_holds_only_declared_and_offered_capabilities() -> None:
    caps = {"portMappings": [{"hostPort": 80}], "bandwidth": {"ingressRate": 1}, "dns": {}}
    plugin = {
        "type": "portmap",
        "capabilities": {"portMappings": True, "bandwidth": False, "ips": True},
        "runtimeConfig": {"stale": 1},
    }
    conf = build_plugin_config(NET, plugin, None, caps)
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}


def test_no_runtime_config_without_matching_capabilities() -> None:
    conf = build_plugin_config(NET, {"type": "bridge"}, None, {"portMappings": []})
    assert "runtimeConfig" not in conf
    conf = build_plugin_config(
        NET, {"type": "x", "capabilities": {"dns": True}}, None, {"portMappings": []}
    )
    assert "runtimeConfig" not in conf


def test_loopback_network_is_go_cnis() -> None:
    assert (LOOPBACK.name, LOOPBACK.version) == ("cni-loopback", "0.3.1")
    assert [dict(p) for p in LOOPBACK.plugins] == [{"type": "loopback"}]
