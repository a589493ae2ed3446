"""CRI's LinuxContainerResources from criproxy's ContainerResources (statuses, verbose info)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from criproxy.oci.container import ContainerResources


def linux_resources_view(r: ContainerResources) -> api_pb2.LinuxContainerResources:
    return api_pb2.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[
            api_pb2.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in r.hugepage_limits
        ],
        unified=r.unified,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def resources_json(r: ContainerResources | None) -> dict[str, Any] | None:
    """As a request gave them: protobuf's JSON form (int64 as strings), as containerd shows them."""
    if r is None:
        return None
    return json_format.MessageToDict(linux_resources_view(r), preserving_proto_field_name=True)
