"""What one pod asks of CNI: the CNI_* values and the capability args (port mappings,
bandwidth, DNS, cgroup, annotations) containerd's CRI offers, and the bandwidth annotations."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from criproxy.errors import InvalidArgument
from criproxy.network.cni.config import VALID_NAME

if TYPE_CHECKING:
    from collections.abc import Mapping

_IFNAMSIZ = 16

POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
"""containerd passes every pod's annotations under this capability (Multus, Cilium read it)."""
INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth"
EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth"


@dataclass(frozen=True)
class PortMapping:
    """A pod hostPort, for plugins with the `portMappings` capability (e.g. portmap)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    """Lowercase "tcp", "udp" or "sctp", as containerd sends it."""
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.lower(),
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


@dataclass(frozen=True)
class Bandwidth:
    """Traffic shaping for the `bandwidth` capability: rates in bit/s, bursts as containerd sets."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> dict[str, int]:
        return {
            "ingressRate": self.ingress_rate,
            "ingressBurst": self.ingress_burst,
            "egressRate": self.egress_rate,
            "egressBurst": self.egress_burst,
        }


@dataclass(frozen=True)
class DnsConfig:
    """The pod's DNS settings, for plugins with the `dns` capability."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_cni(self) -> dict[str, list[str]]:
        return {
            "servers": list(self.servers),
            "searches": list(self.searches),
            "options": list(self.options),
        }


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class CniRequest:
    """One pod's attachment: what CNI_* and the capability args are made of."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] = field(default_factory=_empty)
    """CNI_ARGS pairs in order: IgnoreUnknown=1, K8S_POD_NAMESPACE, K8S_POD_NAME, ..."""
    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: Bandwidth | None = None
    dns: DnsConfig | None = None
    cgroup_path: str = ""
    annotations: Mapping[str, str] = field(default_factory=_empty)
    loopback: bool = True
    """Run the loopback plugin too; False when the netns's `lo` is up already (criproxy's
    own netns creation brings it up, saving a plugin process per ADD and DEL)."""

    def capability_args(self) -> dict[str, Any]:
        """The runtimeConfig values on offer; each plugin gets those it declares."""
        caps: dict[str, Any] = {POD_ANNOTATIONS_CAPABILITY: dict(self.annotations)}
        if self.port_mappings:
            caps["portMappings"] = [p.to_cni() for p in self.port_mappings]
        if self.bandwidth is not None:
            caps["bandwidth"] = self.bandwidth.to_cni()
        if self.dns is not None:
            caps["dns"] = self.dns.to_cni()
        if self.cgroup_path:
            caps["cgroupPath"] = self.cgroup_path
        return caps

    def validate(self) -> None:
        """InvalidArgument unless CNI takes the container id, interface name and args."""
        if not VALID_NAME.fullmatch(self.container_id):
            raise InvalidArgument(f"invalid container id {self.container_id!r} for CNI")
        name = self.ifname
        if (
            not name
            or len(name) >= _IFNAMSIZ
            or name in (".", "..")
            or any(c in name for c in "/:")
            or any(c.isspace() for c in name)
        ):
            raise InvalidArgument(f"invalid interface name {name!r} for CNI")
        for key, value in self.args.items():
            if not key or any(c in key + value for c in "=;"):
                raise InvalidArgument(f"invalid CNI_ARGS pair {key!r}={value!r}")


# --- bandwidth annotations -------------------------------------------------------------------

_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exp>[+-]?\d+))?"
)
_SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_MIN_BANDWIDTH = 10**3  # containerd's validateBandwidthIsReasonable: 1k ..
_MAX_BANDWIDTH = 10**15  # .. 1P
_MAX_BURST = 2**32 - 1  # containerd's toCNIBandWidth: math.MaxUint32


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1Gi", "1.5k", "1e6") as an integer, rounded up
    as `resource.Quantity.Value()` does; ValueError when it is not one."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None or not text.strip():
        raise ValueError(f"{text!r} is not a quantity (like 10M, 1Gi or 100k)")
    value = Fraction(match["num"])
    if match["suffix"]:
        value *= _SUFFIXES[match["suffix"]]
    elif match["exp"]:
        value *= Fraction(10) ** int(match["exp"])
    return math.ceil(value)


def parse_bandwidth_annotations(annotations: Mapping[str, str]) -> Bandwidth | None:
    """The pod's bandwidth limits from its annotations, as containerd's `toCNIBandWidth`
    (bursts at MaxUint32); None without either annotation."""
    rates: dict[str, int] = {}
    for key in (INGRESS_BANDWIDTH, EGRESS_BANDWIDTH):
        if key not in annotations:
            continue
        try:
            rate = parse_quantity(annotations[key])
        except ValueError as err:
            raise InvalidArgument(f"annotation {key}: {err}") from None
        if rate < _MIN_BANDWIDTH:
            raise InvalidArgument(
                f"annotation {key}={annotations[key]!r} is unreasonably small (< 1kbit)"
            )
        if rate > _MAX_BANDWIDTH:
            raise InvalidArgument(
                f"annotation {key}={annotations[key]!r} is unreasonably large (> 1Pbit)"
            )
        rates[key] = rate
    if not rates:
        return None
    ingress, egress = rates.get(INGRESS_BANDWIDTH, 0), rates.get(EGRESS_BANDWIDTH, 0)
    return Bandwidth(
        ingress_rate=ingress,
        ingress_burst=_MAX_BURST if ingress else 0,
        egress_rate=egress,
        egress_burst=_MAX_BURST if egress else 0,
    )
