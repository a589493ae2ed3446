from __future__ import annotations

import pytest

from criproxy.errors import InvalidArgument
from criproxy.network.cni.request import (
    POD_ANNOTATIONS_CAPABILITY,
    Bandwidth,
    CniRequest,
    DnsConfig,
    PortMapping,
    parse_bandwidth_annotations,
    parse_quantity,
)

MAX_UINT32 = 2**32 - 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10M", 10_000_000),
        ("1Gi", 2**30),
        ("100k", 100_000),
        ("1.5M", 1_500_000),
        ("1e6", 1_000_000),
        ("2E3", 2_000),
        ("1500", 1500),
        ("0.5", 1),  # Value() rounds up
        ("1500m", 2),
        ("512Ki", 512 * 1024),
        ("1P", 10**15),
    ],
)
def test_quantities_parse_like_kubernetes(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "ten", "10 M", "10MB", "1K", "M", "1.2.3", "1e"])
def test_non_quantities_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_no_annotations_means_no_shaping() -> None:
    assert parse_bandwidth_annotations({}) is None
    assert parse_bandwidth_annotations({"other": "1M"}) is None


def test_both_directions_get_max_uint32_bursts_as_in_containerd() -> None:
    got = parse_bandwidth_annotations(
        {"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1Gi"}
    )
    assert got == Bandwidth(10_000_000, MAX_UINT32, 2**30, MAX_UINT32)


def test_one_direction_leaves_the_other_unlimited() -> None:
    got = parse_bandwidth_annotations({"kubernetes.io/egress-bandwidth": "100k"})
    assert got == Bandwidth(0, 0, 100_000, MAX_UINT32)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("lots", "not a quantity"), ("999", "unreasonably small"), ("2P", "unreasonably large")],
)
def test_bad_values_name_the_annotation(value: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_bandwidth_annotations({"kubernetes.io/ingress-bandwidth": value})
    assert "kubernetes.io/ingress-bandwidth" in err.value.message
    assert reason in err.value.message


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
