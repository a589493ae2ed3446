"""The sample arithmetic (CPU nano-cores) and the /proc net/dev reader."""

from __future__ import annotations

import pytest

from criproxy.errors import Internal
from criproxy.stats import CgroupSample, InterfaceStats, nano_cores, read_net_dev
from tests.support.stats import NET_DEV, TS


def test_nano_cores_is_cpu_time_over_wall_time() -> None:
    first = CgroupSample(timestamp_ns=TS, cgroup_version=2, cpu_usage_ns=1_000_000_000)
    # 0.5 s of CPU over 2 s of wall time: a quarter of a core.
    second = CgroupSample(
        timestamp_ns=TS + 2_000_000_000, cgroup_version=2, cpu_usage_ns=1_500_000_000
    )
    assert nano_cores(first, second) == 250_000_000
    # Two busy cores.
    third = CgroupSample(
        timestamp_ns=TS + 3_000_000_000, cgroup_version=2, cpu_usage_ns=3_500_000_000
    )
    assert nano_cores(second, third) == 2_000_000_000


def test_nano_cores_is_zero_without_a_usable_previous_sample() -> None:
    now = CgroupSample(timestamp_ns=TS, cgroup_version=1, cpu_usage_ns=10)
    assert nano_cores(None, now) == 0
    assert nano_cores(now, now) == 0  # zero interval
    later_but_reset = CgroupSample(timestamp_ns=TS + 1, cgroup_version=1, cpu_usage_ns=5)
    assert nano_cores(now, later_but_reset) == 0  # counter went backwards
    earlier = CgroupSample(timestamp_ns=TS - 1, cgroup_version=1, cpu_usage_ns=20)
    assert nano_cores(now, earlier) == 0  # negative interval


def test_net_dev_parses_every_interface_counter() -> None:
    assert read_net_dev(NET_DEV) == [
        InterfaceStats("lo", 11540, 140, 0, 0, 11540, 140, 0, 0),
        InterfaceStats("eth0", 9876543, 6543, 2, 1, 1234567, 4321, 3, 4),
        InterfaceStats("net1", 1000000000, 100, 5, 6, 300, 7, 8, 9),
    ]


def test_net_dev_rejects_a_malformed_line() -> None:
    lines = NET_DEV.splitlines()
    with pytest.raises(Internal, match="net/dev"):
        read_net_dev("\n".join([*lines[:2], "  eth0: 1 2 3"]))
    with pytest.raises(Internal, match="net/dev"):
        read_net_dev("\n".join([*lines[:2], "  eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16"]))


def test_this_machines_net_dev_parses() -> None:
    with open("/proc/self/net/dev") as f:
        interfaces = read_net_dev(f.read())
    assert interfaces
    assert all(i.name and ":" not in i.name and i.rx_bytes >= 0 for i in interfaces)
