from __future__ import annotations

from typing import Any

import pytest

from criproxy.network.cni.result import (
    CniInterface,
    IpConfig,
    convert_result,
    parse_plugin_error,
    parse_result,
)

BRIDGE_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:00:00:00:00:01"},
        {"name": "veth1", "mac": "aa:00:00:00:00:02"},
        {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/run/netns/p"},
    ],
    "ips": [{"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}

BRIDGE_040: dict[str, Any] = {
    **BRIDGE_100,
    "cniVersion": "0.4.0",
    "ips": [{"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
}

DUAL_031: dict[str, Any] = {
    "cniVersion": "0.3.1",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
    "ips": [
        {"version": "6", "interface": 0, "address": "fd00:123::5/64", "gateway": "fd00:123::1"},
        {"version": "4", "interface": 0, "address": "10.123.0.5/24", "gateway": "10.123.0.1"},
    ],
}

LEGACY_020: dict[str, Any] = {
    "cniVersion": "0.2.0",
    "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
    "ip6": {"ip": "fd00::5/64"},
    "dns": {"nameservers": ["10.1.0.10"]},
}


@pytest.mark.parametrize("raw", [BRIDGE_100, BRIDGE_040])
def test_bridge_results_of_either_version_give_the_same_model(raw: dict[str, Any]) -> None:
    result = parse_result(raw)
    assert result.ips == (IpConfig("10.88.0.5/16", "10.88.0.1", 4, 2),)
    assert result.interfaces[2] == CniInterface("eth0", "aa:00:00:00:00:03", "/run/netns/p")
    assert result.primary_ip() == "10.88.0.5"
    assert result.additional_ips() == ()
    assert result.raw == raw
    assert result.cni_version == raw["cniVersion"]


def test_dual_stack_prefers_ipv4_and_keeps_ipv6_as_additional() -> None:
    result = parse_result(DUAL_031)
    assert [ip.version for ip in result.ips] == [6, 4]
    assert result.primary_ip() == "10.123.0.5"
    assert result.additional_ips() == ("fd00:123::5",)


def test_ipv6_only_pod_gets_its_ipv6_address() -> None:
    raw = {**DUAL_031, "ips": DUAL_031["ips"][:1]}
    assert parse_result(raw).primary_ip() == "fd00:123::5"


def test_ips_on_other_interfaces_are_not_pod_ips() -> None:
    raw = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1"}, {"name": "eth0"}],
        "ips": [
            {"interface": 0, "address": "192.168.1.2/24"},
            {"interface": 1, "address": "10.123.0.9/24"},
        ],
    }
    result = parse_result(raw)
    assert result.primary_ip() == "10.123.0.9"
    assert result.additional_ips() == ()
    assert parse_result(raw, ifname="net1").primary_ip() == "192.168.1.2"


def test_legacy_ip4_ip6_results_are_understood() -> None:
    result = parse_result(LEGACY_020)
    assert [(ip.address, ip.gateway, ip.version) for ip in result.ips] == [
        ("10.1.0.5/16", "10.1.0.1", 4),
        ("fd00::5/64", "", 6),
    ]
    assert result.primary_ip() == "10.1.0.5"
    assert result.additional_ips() == ("fd00::5",)


def test_result_without_ips_has_no_pod_ip() -> None:
    result = parse_result({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}]})
    assert result.primary_ip() == ""
    assert result.additional_ips() == ()


@pytest.mark.parametrize(
    "raw",
    [
        {"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]},
        {"cniVersion": "1.0.0", "ips": [{"gateway": "10.0.0.1"}]},
        {
            "cniVersion": "1.0.0",
            "interfaces": [],
            "ips": [{"interface": 3, "address": "10.0.0.2/8"}],
        },
        {"cniVersion": "1.0.0", "ips": ["10.0.0.2/8"]},
    ],
)
def test_malformed_results_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_result(raw)


def test_convert_1_0_0_to_0_4_0_adds_ip_versions() -> None:
    converted = convert_result(BRIDGE_100, "0.4.0")
    assert converted == BRIDGE_040
    assert "version" not in BRIDGE_100["ips"][0]  # the input is untouched


def test_convert_0_4_0_to_1_0_0_drops_ip_versions() -> None:
    assert convert_result(BRIDGE_040, "1.0.0") == BRIDGE_100


def test_convert_legacy_to_0_3_1() -> None:
    converted = convert_result(LEGACY_020, "0.3.1")
    assert converted["cniVersion"] == "0.3.1"
    assert converted["ips"] == [
        {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "version": "4"},
        {"address": "fd00::5/64", "version": "6"},
    ]
    assert converted["routes"] == [{"dst": "0.0.0.0/0"}]
    assert "ip4" not in converted


def test_convert_refuses_pre_0_3_targets() -> None:
    with pytest.raises(ValueError):
        convert_result(BRIDGE_100, "0.2.0")


def test_error_json_on_stdout_gives_code_msg_and_details() -> None:
    stdout = b'{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no bridge"}'
    assert parse_plugin_error(1, stdout, b"noise") == (7, "bad config", "no bridge")


def test_error_without_json_falls_back_to_stderr() -> None:
    code, msg, details = parse_plugin_error(2, b"", b"panic: boom\n")
    assert (code, details) == (None, "")
    assert "exit status 2" in msg
    assert "panic: boom" in msg


def test_unparsable_stdout_is_reported_verbatim() -> None:
    code, msg, _ = parse_plugin_error(1, b"oops not json", b"")
    assert code is None
    assert "oops not json" in msg


def test_silent_failure_still_says_what_happened() -> None:
    assert parse_plugin_error(3, b"", b"") == (None, "exit status 3 with no error message", "")
