"""CNI for pods: which config applies, whether the node's network is ready, and running the
plugin chain for one pod (ADD, DEL, CHECK) as containerd's CRI does through go-cni/libcni.

The runtime side of the CNI spec (1.0.0, and the 0.3.x/0.4.0 configs still in the field) is
small enough to own: exec each plugin with the CNI_* environment and its config on stdin,
feed each result to the next plugin as `prevResult`, and hand the final result back to the
caller, who persists it and gives it back to DEL. libcni's on-disk result cache is not
needed for that and is left out.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import math
import os
import queue
import re
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog

from criproxy.errors import (
    CriproxyError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
)
from criproxy.network.netns import is_netns

if TYPE_CHECKING:
    from collections.abc import Mapping

    from structlog.typing import FilteringBoundLogger

_EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass(frozen=True)
class NetworkConfig:
    """The lexically first usable CNI config in the conf dir (as the kubelet's runtimes pick)."""

    path: Path
    name: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any]


class NetworkNotReady(Exception):
    """Why the node has no usable pod network; the message goes into Status."""


def _load(path: Path) -> NetworkConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NetworkNotReady(f"CNI config {path} cannot be read: {err}") from None
    if not isinstance(raw, dict):
        raise NetworkNotReady(f"CNI config {path} is not a JSON object")
    if path.suffix == ".conflist" or "plugins" in raw:
        plugins = raw.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise NetworkNotReady(f"CNI config list {path} has no plugins")
    else:
        plugins = [raw]
    if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise NetworkNotReady(f"CNI config {path} has a plugin without a 'type'")
    return NetworkConfig(path, str(raw.get("name", "")), tuple(plugins), raw)


def load_network_config(conf_dir: str, bin_dirs: tuple[str, ...]) -> NetworkConfig:
    """Load the first config of the conf dir and check that its plugin binaries exist."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(_EXTENSIONS))
    except FileNotFoundError:
        raise NetworkNotReady(f"no CNI config: directory {conf_dir} does not exist") from None
    except OSError as err:
        raise NetworkNotReady(f"CNI config directory {conf_dir} cannot be read: {err}") from None
    if not names:
        raise NetworkNotReady(f"no CNI config: no .conf/.conflist/.json file in {conf_dir}")
    config = _load(Path(conf_dir) / names[0])
    for plugin in config.plugins:
        kind = plugin["type"]
        if not any(os.access(Path(d) / kind, os.X_OK) for d in bin_dirs):
            raise NetworkNotReady(
                f"CNI plugin {kind!r} of {config.path} not found in {':'.join(bin_dirs)}"
            )
    return config


# --- what one pod asks for -------------------------------------------------------------------

log = structlog.get_logger("criproxy.network")

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


# --- results ---------------------------------------------------------------------------------


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


def _version_tuple(version: str) -> tuple[int, ...]:
    """A CNI version as a comparable tuple; empty means 0.1.0, as the spec says."""
    if not version:
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid CNI version {version!r}")
    return tuple(int(p) for p in parts)


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
    target = _version_tuple(version)
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


# --- running plugins -------------------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_IFNAMSIZ = 16
_ETXTBSY_RETRIES = 5
_MAX_VERSION = (1, 1, 0)
_PLUGIN_THREADS = 64

Command = Literal["ADD", "DEL", "CHECK"]


@dataclass(frozen=True)
class _Network:
    """One network list to run: the pod's conflist, or the loopback network."""

    name: str
    version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False


LOOPBACK = _Network("cni-loopback", "0.3.1", (MappingProxyType({"type": "loopback"}),))
"""go-cni's `WithLoNetwork`: a network of its own that brings `lo` up in the pod's netns."""


@dataclass
class _Progress:
    """What an ADD of one network got to: the last result, for DEL after a failure."""

    result: dict[str, Any] | None = None
    plugin: str = ""


def build_plugin_config(
    network: _Network,
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
) -> dict[str, Any]:
    """The stdin of one plugin, as libcni's `buildOneConfig`: the list's name and cniVersion,
    the previous result, and `runtimeConfig` with only the capabilities the plugin declares."""
    conf = dict(plugin)
    conf["name"] = network.name
    conf["cniVersion"] = network.version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    declared = plugin.get("capabilities")
    if isinstance(declared, dict):
        runtime = {
            cap: capability_args[cap]
            for cap, enabled in declared.items()
            if enabled is True and cap in capability_args
        }
        if runtime:
            conf["runtimeConfig"] = runtime
    return conf


def _pick_version(raw: Mapping[str, Any], path: Path) -> str:
    """The config's cniVersion, or the highest supported of `cniVersions` (CNI 1.1)."""
    versions = []
    for candidate in [raw.get("cniVersion", ""), *(raw.get("cniVersions") or [])]:
        if not isinstance(candidate, str):
            raise NetworkNotReady(f"CNI config {path} has an invalid cniVersion {candidate!r}")
        try:
            parsed = _version_tuple(candidate)
        except ValueError as err:
            raise NetworkNotReady(f"CNI config {path}: {err}") from None
        if candidate and parsed <= _MAX_VERSION:
            versions.append((parsed, candidate))
    return max(versions)[1] if versions else str(raw.get("cniVersion", ""))


def _network_of(config: NetworkConfig) -> _Network:
    if not _NAME.fullmatch(config.name):
        raise NetworkNotReady(
            f"CNI config {config.path} has an invalid network name {config.name!r}"
        )
    return _Network(
        name=config.name,
        version=_pick_version(config.raw, config.path),
        plugins=config.plugins,
        disable_check=config.raw.get("disableCheck") is True,
    )


def _validate(request: CniRequest) -> None:
    if not _NAME.fullmatch(request.container_id):
        raise InvalidArgument(f"invalid container id {request.container_id!r} for CNI")
    name = request.ifname
    if (
        not name
        or len(name) >= _IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/:")
        or any(c.isspace() for c in name)
    ):
        raise InvalidArgument(f"invalid interface name {name!r} for CNI")
    for key, value in request.args.items():
        if not key or any(c in key + value for c in "=;"):
            raise InvalidArgument(f"invalid CNI_ARGS pair {key!r}={value!r}")


def _benign_del_error(err: CriproxyError, netns: str) -> bool:
    """The DEL failures go-cni's `Remove` ignores: what is gone already is not an error."""
    text = err.message
    return "not found" in text or (not netns and "no such file or directory" in text.lower())


class _PluginProcess:
    """One plugin run on a worker thread: spawn, collect both outputs, read the exit status.

    A blocking run on a thread costs the event loop far less than asyncio's pipe
    transports and child watcher (three pipes, their callbacks, a pidfd reader per run),
    and the spawn (vfork + exec, which waits for the child's exec) stays off the loop.

    The config goes in as a memfd, so a plugin that exits without reading it, or leaves a
    child holding its stdin, never blocks the write; stdout and stderr are pipes, as
    libcni's (a plugin may reopen /dev/stderr), read until the plugin has exited and then
    for `_OUTPUT_GRACE` at most (a child it left running may hold them open for good).
    The exit status is read without reaping (`WNOWAIT`, through a pidfd, so never of a
    reused pid) and `_REAPER` reaps the zombie a moment later: a multi-threaded (Go) plugin
    reaped the instant it exits races its last threads' teardown, and the kernel's /proc
    dcache flush then spins in the reaper (perf: up to 1 ms of CPU per plugin run, a fifth
    of criproxy's CPU with ten pods at once).
    """

    def __init__(self, path: str, stdin: bytes, env: Mapping[str, str]) -> None:
        self._args = ([path], stdin, env)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(self) -> tuple[int, bytes, bytes]:
        argv, stdin, env = self._args
        config = _memfd("cni-config", stdin)
        try:
            with self._lock:
                if self._cancelled:
                    return -signal.SIGKILL, b"", b""
                process = self._process = subprocess.Popen(
                    argv,
                    stdin=config,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
                pidfd = os.pidfd_open(process.pid)  # nothing reaps it before this lock goes
        finally:
            os.close(config)
        try:
            out, err = _drain(process, pidfd)
            code = _exit_status(process, pidfd)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # the reaper must not wait on a running plugin
            raise
        finally:
            os.close(pidfd)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            _REAPER.reap_soon(process)
        return code, out, err

    def kill(self) -> None:
        """Kill the plugin, or keep it from starting."""
        with self._lock:
            self._cancelled = True
            if self._process is not None and self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()


_OUTPUT_CAP = 16 * 1024 * 1024
"""What is kept of each of a plugin's outputs; the rest is read and dropped."""
_OUTPUT_GRACE = 1.0
"""How long a plugin's outputs are still read after it exited, while something holds them."""


def _memfd(name: str, data: bytes) -> int:
    """A memfd holding `data`, at offset 0."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _drain(process: subprocess.Popen[bytes], pidfd: int) -> tuple[bytes, bytes]:
    """Both outputs, read until closed, or until `_OUTPUT_GRACE` after the plugin's exit
    (`pidfd` readable); each kept up to `_OUTPUT_CAP`."""
    assert process.stdout is not None and process.stderr is not None
    kept = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    deadline: float | None = None
    with selectors.PollSelector() as selector:
        for fd in (*kept, pidfd):
            selector.register(fd, selectors.EVENT_READ)
        while len(selector.get_map()) > (0 if deadline is not None else 1):
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            for key, _ in selector.select(timeout):
                if key.fd == pidfd:
                    selector.unregister(pidfd)
                    deadline = time.monotonic() + _OUTPUT_GRACE
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = kept[key.fd]
                buffer += chunk[: max(0, _OUTPUT_CAP - len(buffer))]
    return bytes(kept[process.stdout.fileno()]), bytes(kept[process.stderr.fileno()])


def _exit_status(process: subprocess.Popen[bytes], pidfd: int) -> int:
    """As `Popen.returncode` (minus the signal that ended it), leaving the zombie."""
    try:
        status = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        # Reaped already (by the reaper after a cancel), or SIGCHLD ignored (the kernel
        # reaped it; criproxy's command resets that, and Popen then says 0).
        return process.returncode if process.returncode is not None else process.wait()
    assert status is not None  # no WNOHANG
    if status.si_code == os.CLD_EXITED:
        return status.si_status
    return -status.si_status


class _Reaper:
    """Reaps exited plugins `delay` seconds after their exit was read, on one thread.

    A zombie keeps its pid, so nothing else can be signalled by mistake meanwhile. A
    plugin still running (killed, and not dead yet) goes back in the queue: the thread
    never blocks on one.
    """

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._queue: queue.SimpleQueue[tuple[float, subprocess.Popen[bytes]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def reap_soon(self, process: subprocess.Popen[bytes]) -> None:
        self._queue.put((time.monotonic() + self._delay, process))
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="cni-reaper", daemon=True)
            try:
                thread.start()
            except RuntimeError as err:  # no thread to be had: reap what is due here
                log.warning("cannot start the CNI reaper thread", error=str(err))
                self._reap_due()
                return
            self._thread = thread

    def _reap_due(self) -> None:
        while True:
            try:
                _, process = self._queue.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(OSError):
                process.wait()  # exited, or killed: it does not run on

    def _run(self) -> None:
        while True:
            due, process = self._queue.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if process.poll() is None:
                    self._queue.put((time.monotonic() + self._delay, process))
            except Exception as err:  # the reaper must outlive any one process
                log.warning("reaping a CNI plugin failed", pid=process.pid, error=str(err))


_REAPER = _Reaper(delay=0.05)


async def _run_plugin(
    path: str, stdin: bytes, env: Mapping[str, str], limiter: anyio.CapacityLimiter
) -> tuple[int, bytes, bytes]:
    """Exec a plugin, feed it its config, collect its output; killed if cancelled.

    `limiter` bounds the worker threads of plugin runs, apart from the default pool (file
    IO), which a slow or hung plugin must not starve.
    """
    run = _PluginProcess(path, stdin, env)
    try:
        return await anyio.to_thread.run_sync(run.run, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        run.kill()  # the abandoned thread sees it die and hands it to the reaper
        raise


@dataclass(frozen=True)
class _Call:
    """What every plugin of one ADD/DEL/CHECK is run with, beside its own config."""

    request: CniRequest
    netns: str
    ifname: str
    log: FilteringBoundLogger


class Cni:
    """Runs the node's CNI config (plus loopback) for pods; stateless between calls.

    The config is reloaded on every call, so a changed conf dir applies to the next pod, as
    with containerd's config watcher.
    """

    def __init__(self, conf_dir: str, bin_dirs: tuple[str, ...], timeout: float = 60.0) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.timeout = timeout
        self._limiter: anyio.CapacityLimiter | None = None

    def _threads(self) -> anyio.CapacityLimiter:
        """Made on first use, inside the event loop that runs the plugins."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(_PLUGIN_THREADS)
        return self._limiter

    async def _load(self) -> _Network:
        try:
            config = await anyio.to_thread.run_sync(
                load_network_config, self.conf_dir, self.bin_dirs
            )
            return _network_of(config)
        except NetworkNotReady as err:
            raise FailedPrecondition(f"network not ready: {err}") from None

    def _find(self, kind: str) -> str:
        for directory in self.bin_dirs:
            path = os.path.join(directory, kind)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise FailedPrecondition(
            f"CNI plugin {kind!r} not found in {os.pathsep.join(self.bin_dirs)}"
        )

    async def _exec(
        self,
        network: _Network,
        plugin: Mapping[str, Any],
        command: Command,
        call: _Call,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one plugin; its result for ADD (cniVersion filled in as libcni does)."""
        kind = str(plugin["type"])
        path = self._find(kind)
        conf = build_plugin_config(network, plugin, prev_result, call.request.capability_args())
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": call.request.container_id,
            "CNI_NETNS": call.netns,
            "CNI_IFNAME": call.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in call.request.args.items()),
            "CNI_PATH": os.pathsep.join(self.bin_dirs),
        }
        stdin = json.dumps(conf).encode()
        started = time.monotonic()
        for attempt in range(_ETXTBSY_RETRIES + 1):
            try:
                returncode, stdout, stderr = await _run_plugin(path, stdin, env, self._threads())
                break
            except OSError as err:
                if err.errno == errno.ETXTBSY and attempt < _ETXTBSY_RETRIES:
                    await anyio.sleep(1)  # the binary is being replaced right now; libcni waits
                    continue
                raise CniPluginError(
                    network=network.name, plugin=kind, command=command, code=None, msg=str(err)
                ) from None
        took_ms = round((time.monotonic() - started) * 1000, 1)
        if stderr:
            call.log.debug("cni plugin stderr", plugin=kind, stderr=stderr.decode(errors="replace"))
        if returncode != 0:
            code, msg, details = parse_plugin_error(returncode, stdout, stderr)
            call.log.debug("cni plugin failed", plugin=kind, command=command, ms=took_ms)
            raise CniPluginError(
                network=network.name,
                plugin=kind,
                command=command,
                code=code,
                msg=msg,
                details=details,
            )
        call.log.debug("cni plugin done", plugin=kind, command=command, ms=took_ms)
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise CniPluginError(
                network=network.name,
                plugin=kind,
                command=command,
                code=None,
                msg=f"invalid result {stdout[:500]!r}: {err}",
            ) from None
        if not result.get("cniVersion"):
            result["cniVersion"] = network.version
        return result

    @staticmethod
    def _as_prev(
        network: _Network, result: Mapping[str, Any] | None, call: _Call
    ) -> Mapping[str, Any] | None:
        """A result as the prevResult of `network`'s plugins: in the config's version."""
        if result is None or _version_tuple(network.version) < (0, 3, 0):
            return result
        try:
            return convert_result(result, network.version)
        except ValueError as err:
            call.log.warning("cni result not convertible; passed as is", error=str(err))
            return result

    async def _add(self, network: _Network, call: _Call, progress: _Progress) -> None:
        for plugin in network.plugins:
            progress.plugin = str(plugin["type"])
            prev = self._as_prev(network, progress.result, call)
            progress.result = await self._exec(network, plugin, "ADD", call, prev)
        progress.plugin = ""

    async def _del(
        self,
        network: _Network,
        call: _Call,
        prev_result: Mapping[str, Any] | None,
        failures: list[CriproxyError],
    ) -> None:
        """DEL every plugin in reverse order, best effort: one failure does not stop the rest.

        prevResult goes along from CNI 0.4.0 on, as libcni's `DelNetworkList` does."""
        prev = None
        if _version_tuple(network.version) >= (0, 4, 0):
            prev = self._as_prev(network, prev_result, call)
        for plugin in reversed(network.plugins):
            try:
                await self._exec(network, plugin, "DEL", call, prev)
            except CriproxyError as err:
                if _benign_del_error(err, call.netns):
                    call.log.info("cni del: already gone", plugin=plugin["type"], error=err.message)
                else:
                    call.log.warning("cni del failed", plugin=plugin["type"], error=err.message)
                    failures.append(err)

    async def setup(self, request: CniRequest) -> CniResult:
        """ADD the pod to loopback and to the node's network; return the pod network's result.

        Both networks run concurrently, as go-cni's `Setup` does. On any failure, timeout or
        cancellation, DEL runs for everything (shielded) before the error is raised, so no IP,
        veth or iptables rule is left behind.
        """
        _validate(request)
        network = await self._load()
        bound = log.bind(sandbox=request.container_id, network=network.name, netns=request.netns)
        pod = _Call(request, request.netns, request.ifname, bound)
        lo = _Call(request, request.netns, "lo", bound)
        started = time.monotonic()
        chain, loopback = _Progress(), _Progress()
        failures: list[CriproxyError] = []

        async def attach(net: _Network, call: _Call, progress: _Progress) -> None:
            try:
                await self._add(net, call, progress)
            except CriproxyError as err:
                failures.append(err)
            except Exception as err:
                bound.exception("cni add crashed", plugin=progress.plugin)
                failures.append(Internal(f"CNI ADD of network {net.name!r} failed: {err!r}"))

        result: CniResult | None = None
        try:
            with anyio.move_on_after(self.timeout) as scope:
                async with anyio.create_task_group() as tg:
                    if request.loopback:
                        tg.start_soon(attach, LOOPBACK, lo, loopback)
                    tg.start_soon(attach, network, pod, chain)
            if scope.cancelled_caught:
                running = chain.plugin or loopback.plugin
                failures.insert(
                    0,
                    DeadlineExceeded(
                        f"CNI ADD of network {network.name!r} did not finish within "
                        f"{self.timeout:g}s (plugin {running!r} was running)"
                    ),
                )
            if not failures and chain.result is not None:
                result = self._result(network, request, chain.result, failures)
        except BaseException:
            await self._undo(network, pod, lo, chain)
            raise
        if failures or result is None:
            await self._undo(network, pod, lo, chain)
            raise failures[0] if failures else Internal("CNI ADD returned no result")
        bound.info(
            "pod network set up",
            ip=result.primary_ip(),
            additional_ips=list(result.additional_ips()),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return result

    @staticmethod
    def _result(
        network: _Network,
        request: CniRequest,
        raw: dict[str, Any],
        failures: list[CriproxyError],
    ) -> CniResult | None:
        try:
            if _version_tuple(network.version) >= (0, 3, 0):
                raw = convert_result(raw, network.version)
            result = parse_result(raw, request.ifname)
        except ValueError as err:
            failures.append(Internal(f"CNI network {network.name!r} returned a bad result: {err}"))
            return None
        if not result.pod_ips():
            failures.append(
                Internal(
                    f"CNI network {network.name!r} returned no IP for {request.ifname} "
                    f"of sandbox {request.container_id}"
                )
            )
            return None
        return result

    async def _undo(self, network: _Network, pod: _Call, lo: _Call, chain: _Progress) -> None:
        """DEL after a failed ADD: shielded and bounded, errors only logged."""
        pod.log.info("pod network setup failed; deleting what was added")
        failures: list[CriproxyError] = []
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._del, network, pod, chain.result, failures)
                if pod.request.loopback:
                    tg.start_soon(self._del, LOOPBACK, lo, None, failures)
        if scope.cancelled_caught:
            pod.log.warning("cni del after failed add timed out", timeout=self.timeout)

    async def teardown(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """DEL the pod from the node's network (reverse order) and from loopback.

        A netns that is gone (missing or unmounted pin) becomes CNI_NETNS="", as containerd
        does, so plugins still release IPs and host-side rules. Every plugin is tried; one
        error (the first, or all messages joined) is raised at the end if any truly failed.
        """
        _validate(request)
        netns = request.netns
        if netns and not await anyio.to_thread.run_sync(is_netns, Path(netns)):
            netns = ""
        bound = log.bind(sandbox=request.container_id, netns=request.netns)
        started = time.monotonic()
        failures: list[CriproxyError] = []
        network: _Network | None = None
        try:
            network = await self._load()
        except FailedPrecondition as err:
            failures.append(err)
        with anyio.move_on_after(self.timeout) as scope:
            async with anyio.create_task_group() as tg:
                if network is not None:
                    bound = bound.bind(network=network.name)
                    pod = _Call(request, netns, request.ifname, bound)
                    tg.start_soon(self._del, network, pod, prev_result, failures)
                if netns and request.loopback:  # lo lives and dies with the netns
                    lo = _Call(request, netns, "lo", bound)
                    tg.start_soon(self._del, LOOPBACK, lo, None, failures)
        if scope.cancelled_caught:
            failures.insert(0, DeadlineExceeded(f"CNI DEL did not finish within {self.timeout:g}s"))
        if failures:
            if len(failures) == 1:
                raise failures[0]
            raise Internal("; ".join(f.message for f in failures))
        bound.info("pod network torn down", ms=round((time.monotonic() - started) * 1000, 1))

    async def check(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """CHECK the pod's network (CNI >= 0.4.0, unless the config sets disableCheck)."""
        _validate(request)
        network = await self._load()
        if network.disable_check or _version_tuple(network.version) < (0, 4, 0):
            return
        call = _Call(request, request.netns, request.ifname, log.bind(sandbox=request.container_id))
        prev = self._as_prev(network, prev_result, call)
        with anyio.move_on_after(self.timeout) as scope:
            for plugin in network.plugins:
                await self._exec(network, plugin, "CHECK", call, prev)
        if scope.cancelled_caught:
            raise DeadlineExceeded(f"CNI CHECK did not finish within {self.timeout:g}s")
