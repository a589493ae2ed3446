"""CNI for pods: which config applies, whether the node's network is ready, and running the
plugin chains for one pod (ADD, DEL, CHECK) as containerd's CRI does through go-cni/libcni.

`config` loads the conf dir, `request` holds what a pod asks for, `result` what the plugins
hand back, `plugin` runs one plugin process, and `cni.Cni` runs the chains.
"""

from criproxy.network.cni.cni import Cni
from criproxy.network.cni.config import NetworkConfig, NetworkNotReady, load_network_config
from criproxy.network.cni.request import (
    Bandwidth,
    CniRequest,
    DnsConfig,
    PortMapping,
    parse_bandwidth_annotations,
)
from criproxy.network.cni.result import CniInterface, CniPluginError, CniResult, IpConfig

__all__ = [
    "Bandwidth",
    "Cni",
    "CniInterface",
    "CniPluginError",
    "CniRequest",
    "CniResult",
    "DnsConfig",
    "IpConfig",
    "NetworkConfig",
    "NetworkNotReady",
    "PortMapping",
    "load_network_config",
    "parse_bandwidth_annotations",
]
