"""What a plugin chain hands back: its result in one model whatever CNI version it spoke,
conversion between versions (libcni's convert), and a failed plugin's error."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from criproxy.errors import Internal
from criproxy.network.cni.config import version_tuple

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class IpConfig:
    address: str
    """CIDR notation, e.g. "10.88.0.5/16"."""
    gateway: str
    version: Literal[4, 6]
    interface: int | None = None
    """Index into the result's interfaces; None means the pod's interface."""


@dataclass(frozen=True)
class CniInterface:
    name: str
    mac: str = ""
    sandbox: str = ""
    """The netns path for interfaces inside the pod; empty for host-side ones."""


@dataclass(frozen=True)
class CniResult:
    """The chain's final result in one model, whatever CNI version the plugins spoke."""

    ips: tuple[IpConfig, ...]
    raw: dict[str, Any]
    """The final result JSON (in the config's version): persist it, give it back to DEL."""
    interfaces: tuple[CniInterface, ...] = ()
    cni_version: str = ""
    ifname: str = "eth0"

    def pod_ips(self) -> tuple[IpConfig, ...]:
        """The IPs on the pod's interface, as containerd's go-cni attributes them."""
        picked = []
        for ip in self.ips:
            if ip.interface is None or (
                0 <= ip.interface < len(self.interfaces)
                and self.interfaces[ip.interface].name == self.ifname
            ):
                picked.append(ip)
        return tuple(picked)

    def _ordered(self) -> list[str]:
        ips = self.pod_ips()
        first = next((ip for ip in ips if ip.version == 4), ips[0] if ips else None)
        if first is None:
            return []
        rest = [ip for ip in ips if ip is not first]
        return [_bare(ip.address) for ip in (first, *rest)]

    def primary_ip(self) -> str:
        """The pod IP: the first IPv4 address, else the first IPv6 one; "" without any."""
        ordered = self._ordered()
        return ordered[0] if ordered else ""

    def additional_ips(self) -> tuple[str, ...]:
        """The pod's other IPs, in result order (dual-stack: the IPv6 one)."""
        return tuple(self._ordered()[1:])


def _bare(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip)


def _ip_version(address: str) -> Literal[4, 6]:
    return 4 if ipaddress.ip_interface(address).version == 4 else 6


def _normalize(result: Mapping[str, Any]) -> dict[str, Any]:
    """A copy in the 0.3.0+ shape (`ips`, `interfaces`, `routes`, `dns`); 0.1/0.2 `ip4`/`ip6`
    results are converted as libcni's convert does."""
    out = json.loads(json.dumps(result))
    if not isinstance(out, dict):
        raise ValueError("a CNI result must be a JSON object")
    if "ips" in out or ("ip4" not in out and "ip6" not in out):
        return out
    ips: list[dict[str, Any]] = []
    routes: list[Any] = []
    for key in ("ip4", "ip6"):
        section = out.pop(key, None)
        if not isinstance(section, dict) or "ip" not in section:
            continue
        entry = {"address": section["ip"]}
        if section.get("gateway"):
            entry["gateway"] = section["gateway"]
        ips.append(entry)
        routes.extend(section.get("routes") or [])
    out["ips"] = ips
    out.setdefault("interfaces", [])
    if routes:
        out["routes"] = routes
    return out


def convert_result(result: Mapping[str, Any], version: str) -> dict[str, Any]:
    """`result` in the shape of CNI `version` (>= 0.3.0): 0.3.x/0.4.0 carry `ips[].version`,
    1.0.0 does not. ValueError when it cannot be."""
    target = version_tuple(version)
    if target < (0, 3, 0):
        raise ValueError(f"cannot convert a CNI result to version {version}")
    out = _normalize(result)
    ips = out.get("ips") or []
    if not isinstance(ips, list) or not all(isinstance(ip, dict) for ip in ips):
        raise ValueError("a CNI result's ips must be a list of objects")
    for ip in ips:
        if target < (1, 0, 0):
            ip["version"] = str(_ip_version(str(ip.get("address", ""))))
        else:
            ip.pop("version", None)
    out["cniVersion"] = version
    return out


def parse_result(raw: Mapping[str, Any], ifname: str = "eth0") -> CniResult:
    """The model of a result of any CNI version; ValueError for a malformed one."""
    data = _normalize(raw)
    interfaces = []
    for entry in data.get("interfaces") or []:
        if not isinstance(entry, dict):
            raise ValueError(f"interface entry {entry!r} is not an object")
        interfaces.append(
            CniInterface(
                name=str(entry.get("name", "")),
                mac=str(entry.get("mac", "")),
                sandbox=str(entry.get("sandbox", "")),
            )
        )
    ips = []
    for entry in data.get("ips") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise ValueError(f"ip entry {entry!r} has no address")
        index = entry.get("interface")
        if index is not None and (not isinstance(index, int) or index >= len(interfaces)):
            raise ValueError(f"ip entry {entry!r} names interface {index!r} of {len(interfaces)}")
        ips.append(
            IpConfig(
                address=entry["address"],
                gateway=str(entry.get("gateway") or ""),
                version=_ip_version(entry["address"]),
                interface=index,
            )
        )
    return CniResult(
        ips=tuple(ips),
        raw=dict(raw),
        interfaces=tuple(interfaces),
        cni_version=str(raw.get("cniVersion", "")),
        ifname=ifname,
    )


# --- errors ----------------------------------------------------------------------------------


class CniPluginError(Internal):
    """A plugin failed: its type, the CNI error code (None when it gave none) and message."""

    def __init__(
        self,
        *,
        network: str,
        plugin: str,
        command: str,
        code: int | None,
        msg: str,
        details: str = "",
    ) -> None:
        text = f"CNI plugin {plugin!r} of network {network!r} failed ({command})"
        if code is not None:
            text += f" with CNI error code {code}"
        text += f": {msg}"
        if details:
            text += f" ({details})"
        super().__init__(text)
        self.network = network
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


def parse_plugin_error(
    returncode: int, stdout: bytes, stderr: bytes
) -> tuple[int | None, str, str]:
    """(code, msg, details) of a failed plugin: its CNI error JSON on stdout, else its stderr,
    as libcni's `pluginErr` reads them."""
    text = stdout.decode(errors="replace").strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and ("code" in data or "msg" in data):
            code = data.get("code")
            return (
                code if isinstance(code, int) else None,
                str(data.get("msg") or f"exit status {returncode}"),
                str(data.get("details") or ""),
            )
        return None, f"exit status {returncode}, unparsable error output {text[:500]!r}", ""
    err = stderr.decode(errors="replace").strip()
    if err:
        return None, f"exit status {returncode}: {err[:1000]}", ""
    return None, f"exit status {returncode} with no error message", ""
