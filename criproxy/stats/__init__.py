"""Container and pod stats: one cgroup sample type, read from containerd's task metrics or
from a pod cgroup's files, the sampler that remembers samples and layer usage, and the
figures the CRI stats and metrics calls report (as dataclasses; `cri/convert/` builds the
messages). Nothing here imports the sandbox or container services: they are passed in.
"""

from criproxy.stats.cgroupfs import apply_pod_limits, cgroup_dir, read_pod_cgroup
from criproxy.stats.containerd import decode_metrics
from criproxy.stats.sample import (
    BlockIo,
    CgroupSample,
    InterfaceStats,
    Pressure,
    PressureData,
    nano_cores,
    read_net_dev,
)
from criproxy.stats.usage import (
    ContainerAttributes,
    ContainerIndex,
    ContainerMetricsInput,
    ContainerUsage,
    PodAttributes,
    PodIndex,
    PodMetricsInput,
    PodUsage,
    UsageService,
)

__all__ = [
    "BlockIo",
    "CgroupSample",
    "ContainerAttributes",
    "ContainerIndex",
    "ContainerMetricsInput",
    "ContainerUsage",
    "InterfaceStats",
    "PodAttributes",
    "PodIndex",
    "PodMetricsInput",
    "PodUsage",
    "Pressure",
    "PressureData",
    "UsageService",
    "apply_pod_limits",
    "cgroup_dir",
    "decode_metrics",
    "nano_cores",
    "read_net_dev",
    "read_pod_cgroup",
]
