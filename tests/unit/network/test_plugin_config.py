from __future__ import annotations

from criproxy.network.cni import (
    LOOPBACK,
    POD_ANNOTATIONS_CAPABILITY,
    Bandwidth,
    CniRequest,
    DnsConfig,
    PortMapping,
    build_plugin_config,
)
from criproxy.network.cni import _Network as Network

NET = Network("podnet", "1.0.0", ({"type": "bridge"},))


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


def test_capability_args_follow_containerd_names() -> None:
    request = CniRequest(
        "abc",
        "/run/netns/abc",
        port_mappings=(PortMapping(8080, 80, "TCP", "127.0.0.1"), PortMapping(53, 53, "udp")),
        bandwidth=Bandwidth(1000, 2, 3000, 4),
        dns=DnsConfig(("10.0.0.10",), ("svc.cluster.local",), ("ndots:5",)),
        cgroup_path="/kubepods/pod1",
        annotations={"a": "b"},
    )
    assert request.capability_args() == {
        POD_ANNOTATIONS_CAPABILITY: {"a": "b"},
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp"},
        ],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2, "egressRate": 3000, "egressBurst": 4},
        "dns": {
            "servers": ["10.0.0.10"],
            "searches": ["svc.cluster.local"],
            "options": ["ndots:5"],
        },
        "cgroupPath": "/kubepods/pod1",
    }


def test_minimal_request_offers_only_the_pod_annotations() -> None:
    assert CniRequest("abc", "/x").capability_args() == {POD_ANNOTATIONS_CAPABILITY: {}}


def test_loopback_network_is_go_cnis() -> None:
    assert (LOOPBACK.name, LOOPBACK.version) == ("cni-loopback", "0.3.1")
    assert [dict(p) for p in LOOPBACK.plugins] == [{"type": "loopback"}]
