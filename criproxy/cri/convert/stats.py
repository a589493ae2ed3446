"""CRI stats messages from the stats domain's figures: ContainerStats, PodSandboxStats and
the pod's NetworkUsage, field by field as containerd's CRI plugin fills them
(`internal/cri/server/container_stats_list.go`, `sandbox_stats_linux.go`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from collections.abc import Iterable

    from criproxy.stats import (
        CgroupSample,
        ContainerUsage,
        InterfaceStats,
        PodUsage,
        Pressure,
        PressureData,
    )

__all__ = [
    "DEFAULT_INTERFACE",
    "container_stats",
    "network_usage",
    "pod_interfaces",
    "pod_sandbox_stats",
    "u64",
]

DEFAULT_INTERFACE = "eth0"
"""The pod's default interface, as the kubelet and containerd name it."""
_LOOPBACK = "lo"
_U64_MAX = (1 << 64) - 1


def u64(value: int) -> api_pb2.UInt64Value:
    """A CRI UInt64Value, clamped to its range (a negative figure reads 0)."""
    return api_pb2.UInt64Value(value=min(max(value, 0), _U64_MAX))


def pod_interfaces(interfaces: Iterable[InterfaceStats]) -> list[InterfaceStats]:
    """Every interface but loopback, which the kubelet (and cAdvisor) never count."""
    return [i for i in interfaces if i.name != _LOOPBACK]


def _psi(p: Pressure) -> api_pb2.PsiStats:
    def line(d: PressureData) -> api_pb2.PsiData:
        return api_pb2.PsiData(Total=d.total_ns, Avg10=d.avg10, Avg60=d.avg60, Avg300=d.avg300)

    out = api_pb2.PsiStats()
    if p.some is not None:
        out.Some.CopyFrom(line(p.some))
    if p.full is not None:
        out.Full.CopyFrom(line(p.full))
    return out


def _cpu_usage(sample: CgroupSample, usage_nano_cores: int | None) -> api_pb2.CpuUsage:
    cpu = api_pb2.CpuUsage(
        timestamp=sample.timestamp_ns, usage_core_nano_seconds=u64(sample.cpu_usage_ns)
    )
    if usage_nano_cores is not None:
        cpu.usage_nano_cores.value = usage_nano_cores
    if sample.cpu_pressure is not None:
        cpu.psi.CopyFrom(_psi(sample.cpu_pressure))
    return cpu


def _memory_usage(sample: CgroupSample) -> api_pb2.MemoryUsage:
    memory = api_pb2.MemoryUsage(
        timestamp=sample.timestamp_ns,
        working_set_bytes=u64(sample.memory_working_set_bytes),
        available_bytes=u64(sample.available_bytes),
        usage_bytes=u64(sample.memory_usage_bytes),
        rss_bytes=u64(sample.rss_bytes),
        page_faults=u64(sample.page_faults),
        major_page_faults=u64(sample.major_page_faults),
    )
    if sample.memory_pressure is not None:
        memory.psi.CopyFrom(_psi(sample.memory_pressure))
    return memory


def container_stats(usage: ContainerUsage) -> api_pb2.ContainerStats:
    """One container's CRI stats (see ContainerUsage for what is filled when)."""
    sample = usage.sample
    fs_timestamp_ns = usage.fs_timestamp_ns
    if fs_timestamp_ns is None:
        fs_timestamp_ns = sample.timestamp_ns if sample is not None else time.time_ns()
    attributes = usage.attributes
    stats = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=attributes.id,
            metadata=api_pb2.ContainerMetadata(name=attributes.name, attempt=attributes.attempt),
            labels=dict(attributes.labels),
            annotations=dict(attributes.annotations),
        ),
        writable_layer=api_pb2.FilesystemUsage(
            timestamp=fs_timestamp_ns,
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.fs_mountpoint),
            used_bytes=u64(usage.writable_layer_bytes),
            inodes_used=u64(usage.writable_layer_inodes),
        ),
    )
    if sample is None:
        return stats
    if sample.has_cpu:
        stats.cpu.CopyFrom(_cpu_usage(sample, usage.nano_cores))
    if sample.has_memory:
        stats.memory.CopyFrom(_memory_usage(sample))
        if sample.swap_usage_bytes is not None:
            stats.swap.timestamp = sample.timestamp_ns
            stats.swap.swap_usage_bytes.value = sample.swap_usage_bytes
            if sample.swap_limit_bytes is not None:
                stats.swap.swap_available_bytes.value = max(
                    sample.swap_limit_bytes - sample.swap_usage_bytes, 0
                )
    if sample.io_pressure is not None:
        stats.io.timestamp = sample.timestamp_ns
        stats.io.psi.CopyFrom(_psi(sample.io_pressure))
    return stats


def _interface_usage(i: InterfaceStats) -> api_pb2.NetworkInterfaceUsage:
    return api_pb2.NetworkInterfaceUsage(
        name=i.name,
        rx_bytes=u64(i.rx_bytes),
        rx_errors=u64(i.rx_errors),
        tx_bytes=u64(i.tx_bytes),
        tx_errors=u64(i.tx_errors),
    )


def network_usage(interfaces: Iterable[InterfaceStats], timestamp_ns: int) -> api_pb2.NetworkUsage:
    """The pod's NetworkUsage as the kubelet reads it.

    `interfaces` lists every interface but `lo`, the default one included (the kubelet's
    `Interfaces` means "all found", as cAdvisor fills it, and containerd sends it so);
    `default_interface` is eth0, or the first interface when the pod has no eth0.
    """
    usage = api_pb2.NetworkUsage(timestamp=timestamp_ns)
    found = pod_interfaces(interfaces)
    for i in found:
        usage.interfaces.append(_interface_usage(i))
    default = next((i for i in found if i.name == DEFAULT_INTERFACE), found[0] if found else None)
    if default is not None:
        usage.default_interface.CopyFrom(_interface_usage(default))
    return usage


def pod_sandbox_stats(usage: PodUsage) -> api_pb2.PodSandboxStats:
    """One pod's CRI stats (see PodUsage for what is filled when)."""
    sample = usage.sample
    timestamp_ns = usage.timestamp_ns
    if timestamp_ns is None:
        timestamp_ns = sample.timestamp_ns if sample is not None else time.time_ns()
    attributes = usage.attributes
    stats = api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=attributes.id,
            metadata=api_pb2.PodSandboxMetadata(
                name=attributes.name,
                uid=attributes.uid,
                namespace=attributes.namespace,
                attempt=attributes.attempt,
            ),
            labels=dict(attributes.labels),
            annotations=dict(attributes.annotations),
        ),
        linux=api_pb2.LinuxPodSandboxStats(
            process=api_pb2.ProcessUsage(
                timestamp=timestamp_ns, process_count=u64(usage.process_count)
            ),
            containers=[container_stats(c) for c in usage.containers],
        ),
    )
    linux = stats.linux
    if sample is not None and sample.has_cpu:
        linux.cpu.CopyFrom(_cpu_usage(sample, usage.nano_cores))
    if sample is not None and sample.has_memory:
        linux.memory.CopyFrom(_memory_usage(sample))
    if sample is not None and sample.io_pressure is not None:
        linux.io.timestamp = sample.timestamp_ns
        linux.io.psi.CopyFrom(_psi(sample.io_pressure))
    if usage.interfaces is not None:
        linux.network.CopyFrom(network_usage(usage.interfaces, timestamp_ns))
    return stats
