"""Configuration: a TOML file (containerd's CRI key names where one exists) into frozen dataclasses.

Everything is validated at load time, so a typo or a bad value stops `criproxy serve` with a
message naming the key and the value instead of surfacing later as a failed pod.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

DEFAULT_CONFIG_FILE = Path("/etc/criproxy/config.toml")

RestrictOom = bool | Literal["auto"]
CgroupDriver = Literal["cgroupfs", "systemd"]


class ConfigError(Exception):
    """A configuration file or flag that criproxy cannot start with."""


@dataclass(frozen=True)
class ContainerdSection:
    address: str = ""
    """containerd's socket; empty means managed mode (criproxy starts its own containerd)."""
    namespace: str = "k8s.io"
    snapshotter: str = "overlayfs"
    binary: str = "containerd"
    """The executable managed mode runs."""


@dataclass(frozen=True)
class CniSection:
    bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    conf_dir: str = "/etc/cni/net.d"


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry host, as containerd's `registry.configs.<host>.auth`."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identitytoken: str = ""


@dataclass(frozen=True)
class RegistrySection:
    config_path: str = "/etc/criproxy/certs.d"
    configs: Mapping[str, RegistryAuth] = field(default_factory=lambda: MappingProxyType({}))
    """Credentials by registry host, from `[registry.configs."<host>".auth]`."""


@dataclass(frozen=True)
class StreamServerSection:
    address: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port at start, as containerd's default does."""


@dataclass(frozen=True)
class X509KeyPair:
    """containerd's `x509_key_pair_streaming`: the streaming server's TLS pair."""

    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class MetricsSection:
    address: str = "127.0.0.1:9190"
    """`host:port` of `/metrics` and `/healthz`; empty keeps them off. On by default, on
    loopback: an operator (or a node-local agent) has them without configuring anything,
    and nothing listens beyond the node unless asked (the names of pods are in them)."""


@dataclass(frozen=True)
class TracingSection:
    """OpenTelemetry: spans over OTLP/gRPC when `endpoint` is set, none otherwise."""

    endpoint: str = ""
    """`host:port` of an OTLP/gRPC collector (e.g. an OpenTelemetry Collector's 4317)."""
    insecure: bool = True
    """Plain gRPC, as to a collector on the node; false: TLS with the system's CAs."""
    sampling_ratio: float = 1.0
    """Traces started here that are kept (a caller's sampling decision is followed)."""
    service_name: str = "criproxy"


@dataclass(frozen=True)
class CheckpointSection:
    criu_path: str = ""
    """The CRIU binary runc runs for checkpoints and restores; empty: the first `criu`
    on criproxy's PATH."""
    key_path: str = ""
    """The key archives are signed with and restores check; empty: `<root>/checkpoint.key`,
    made on first use. Nodes that restore each other's checkpoints share it."""


@dataclass(frozen=True)
class NriSection:
    """NRI (containerd's keys). On by default, as in containerd 2.x: with no plugin
    connected it costs nothing on any call, and operators' plugins (resource policies,
    device injectors) expect a runtime to offer it."""

    disable: bool = False
    socket_path: str = "/var/run/nri/nri.sock"
    """Where plugins connect (mode 0600: root's plugins only)."""
    disable_connections: bool = False
    """No socket: no plugin can connect (pre-installed ones still start)."""
    plugin_path: str = "/opt/nri/plugins"
    """Pre-installed plugins (`NN-name` executables) criproxy starts at each start."""
    plugin_config_path: str = "/etc/nri/conf.d"
    """Their configurations: `NN-name.conf`, else `name.conf`."""
    plugin_registration_timeout: float = 5.0
    """How long a plugin that connected has to register."""
    plugin_request_timeout: float = 2.0
    """How long a plugin has to answer one event; one that does not is dropped."""


@dataclass(frozen=True)
class RuntimeHandler:
    name: str
    runtime_type: str = "io.containerd.runc.v2"
    runtime_path: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _default_runtimes() -> Mapping[str, RuntimeHandler]:
    return MappingProxyType(
        {
            "runc": RuntimeHandler("runc"),
            "crun": RuntimeHandler("crun", options=MappingProxyType({"BinaryName": "crun"})),
        }
    )


RELOADABLE = ("registry", "runtimes", "default_runtime_name", "log_level")
"""The keys SIGHUP reloads: registry hosts and credentials, runtime handlers, log level."""


@dataclass(frozen=True)
class Config:
    root: Path = Path("/var/lib/criproxy")
    state: Path = Path("/run/criproxy")
    listen: Path = Path("/run/criproxy/criproxy.sock")
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    restrict_oom_score_adj: RestrictOom = "auto"
    max_container_log_line_size: int = 16 * 1024
    image_pull_progress_timeout: float = 300.0
    """Seconds without pull progress before a pull is cancelled; 0 disables the limit."""
    max_concurrent_downloads: int = 3
    enable_cdi: bool = True
    """CDI devices are injected (containerd 2.x's default); off, a request naming one fails."""
    cdi_spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    """Where CDI spec files are read, in rising priority."""
    discard_unpacked_layers: bool = True
    """Layers go only into their snapshots, not also into containerd's content store.

    On, unlike containerd's default: a node runs images and never reads their layer
    blobs back, so keeping them doubles the disk an image takes and has containerd
    receive every byte a second time. Off keeps them (for `ctr export` or a second
    snapshotter)."""
    cgroup_driver: CgroupDriver = "cgroupfs"
    default_runtime_name: str = "runc"
    shutdown_grace_period: float = 10.0
    log_level: str = "info"
    containerd: ContainerdSection = ContainerdSection()
    cni: CniSection = CniSection()
    registry: RegistrySection = RegistrySection()
    stream_server: StreamServerSection = StreamServerSection()
    enable_tls_streaming: bool = False
    """Serve exec/attach/port-forward over TLS (a self-signed pair unless one is given)."""
    x509_key_pair_streaming: X509KeyPair = X509KeyPair()
    stream_idle_timeout: float = 4 * 3600.0
    """A streaming connection with no data either way for this long is closed."""
    metrics: MetricsSection = MetricsSection()
    tracing: TracingSection = TracingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    nri: NriSection = NriSection()
    runtimes: Mapping[str, RuntimeHandler] = field(default_factory=_default_runtimes)

    @property
    def managed(self) -> bool:
        """True when criproxy starts and owns its containerd."""
        return not self.containerd.address

    def reload_from(self, new: Config) -> list[str]:
        """Take `new`'s reloadable keys (SIGHUP) in place; the keys that changed.

        Every service holds this one object and reads these keys at each use, so swapping
        them (each an immutable value, swapped between two awaits of the event loop) gives
        calls in flight the old values and later calls the new ones. The object is frozen
        against everything else."""
        changed = [key for key in RELOADABLE if getattr(self, key) != getattr(new, key)]
        for key in changed:
            object.__setattr__(self, key, getattr(new, key))
        return changed

    def differences_from(self, new: Config) -> list[str]:
        """The keys that differ in `new` but take a restart."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in RELOADABLE and getattr(self, f.name) != getattr(new, f.name)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain JSON-able data, secrets redacted."""
        data: dict[str, Any] = _plain(self)
        for host in data["registry"]["configs"].values():
            for key in ("password", "auth", "identitytoken"):
                if host[key]:
                    host[key] = "<redacted>"
        return data


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- parsing -------------------------------------------------------------------------------

_T = TypeVar("_T")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_duration(text: str) -> float:
    """Parse a Go duration string (`5m`, `1m30s`, `250ms`, `0`) into seconds."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. '5m', '1m30s', '250ms')")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def _bad(key: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"config key {key!r}: invalid value {value!r} (expected {expected})")


def _str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(key, value, "a string")
    return value


def _nonempty(key: str, value: object) -> str:
    text = _str(key, value)
    if not text:
        raise _bad(key, value, "a non-empty string")
    return text


def _abs_path(key: str, value: object) -> Path:
    text = _str(key, value)
    if not text.startswith("/"):
        raise _bad(key, value, "an absolute path")
    return Path(text)


def _abs_str(key: str, value: object) -> str:
    return str(_abs_path(key, value))


def _abs_or_empty(key: str, value: object) -> str:
    return "" if value == "" else _abs_str(key, value)


def _ratio(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _bad(key, value, "a number from 0 to 1")
    return float(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def _socket_address(key: str, value: object) -> str:
    """An absolute socket path, `unix://` prefix allowed; empty selects managed mode."""
    text = _str(key, value)
    path = text.removeprefix("unix://")
    if text and not path.startswith("/"):
        raise _bad(key, value, "an absolute socket path (optionally unix://...), or ''")
    return path


def _int_range(low: int, high: int) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(key, value, f"an integer from {low} to {high}")
        return value

    return parse


def _positive_duration(key: str, value: object) -> float:
    seconds = _duration(key, value)
    if seconds <= 0:
        raise _bad(key, value, "a duration above zero such as '4h'")
    return seconds


def _duration(key: str, value: object) -> float:
    if not isinstance(value, str):
        raise _bad(key, value, "a duration string such as '5m' or '30s'")
    try:
        return parse_duration(value)
    except ValueError:
        raise _bad(key, value, "a duration string such as '5m' or '30s'") from None


def _restrict_oom(key: str, value: object) -> RestrictOom:
    if isinstance(value, bool) or value == "auto":
        return value
    raise _bad(key, value, 'true, false or "auto"')


def _cgroup_driver(key: str, value: object) -> CgroupDriver:
    if value in ("cgroupfs", "systemd"):
        return value
    raise _bad(key, value, "'cgroupfs' or 'systemd'")


def _log_level(key: str, value: object) -> str:
    if value not in _LOG_LEVELS:
        raise _bad(key, value, " or ".join(repr(x) for x in _LOG_LEVELS))
    return str(value)


def _dir_list(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(key, value, "a non-empty list of absolute paths")
    return tuple(str(_abs_path(f"{key}[{i}]", item)) for i, item in enumerate(value))


def _host_port(key: str, value: object) -> str:
    text = _str(key, value)
    if text:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise _bad(key, value, "'host:port' with a port from 0 (any free) to 65535, or ''")
    return text


def _table(key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(key, value, "a table")
    return value


Parser = Callable[[str, object], Any]


def _section(prefix: str, raw: Mapping[str, Any], parsers: Mapping[str, Parser]) -> dict[str, Any]:
    """Parse the known keys of one table; an unknown key is an error (it is usually a typo)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        parser = parsers.get(key)
        if parser is None:
            known = ", ".join(sorted(parsers))
            raise ConfigError(f"unknown config key {dotted!r} (known keys here: {known})")
        out[key] = parser(dotted, value)
    return out


def _runtime_handler(name: str, raw: object) -> RuntimeHandler:
    prefix = f"runtimes.{name}."
    table = _table(prefix.rstrip("."), raw)
    fields = _section(
        prefix,
        table,
        {
            "runtime_type": _nonempty,
            "runtime_path": _str,
            "options": lambda k, v: MappingProxyType(dict(_table(k, v))),
        },
    )
    return RuntimeHandler(name=name, **fields)


def _runtimes(key: str, value: object) -> Mapping[str, RuntimeHandler]:
    table = _table(key, value)
    handlers = dict(_default_runtimes())
    for name, raw in table.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise _bad(f"runtimes.{name}", name, "a handler name of letters, digits, '_.-'")
        handlers[name] = _runtime_handler(name, raw)
    return MappingProxyType(handlers)


def _registry_configs(key: str, value: object) -> Mapping[str, RegistryAuth]:
    auths = {}
    for host, raw in _table(key, value).items():
        table = _section(f"{key}.{host}.", _table(f"{key}.{host}", raw), {"auth": _table})
        if "auth" in table:
            fields = _section(
                f"{key}.{host}.auth.",
                table["auth"],
                {"username": _str, "password": _str, "auth": _str, "identitytoken": _str},
            )
            auths[host] = RegistryAuth(**fields)
    return MappingProxyType(auths)


def _registry(key: str, value: object) -> RegistrySection:
    fields = _section(
        f"{key}.", _table(key, value), {"config_path": _str, "configs": _registry_configs}
    )
    return RegistrySection(**fields)


def _sub(cls: type[_T], parsers: Mapping[str, Parser]) -> Parser:
    def parse(key: str, value: object) -> _T:
        return cls(**_section(f"{key}.", _table(key, value), parsers))

    return parse


_TOP: Mapping[str, Parser] = {
    "root": _abs_path,
    "state": _abs_path,
    "listen": _abs_path,
    "sandbox_image": _nonempty,
    "restrict_oom_score_adj": _restrict_oom,
    "max_container_log_line_size": _int_range(-1, 1 << 30),
    "image_pull_progress_timeout": _duration,
    "max_concurrent_downloads": _int_range(1, 64),
    "discard_unpacked_layers": _bool,
    "enable_cdi": _bool,
    "cdi_spec_dirs": _dir_list,
    "cgroup_driver": _cgroup_driver,
    "default_runtime_name": _nonempty,
    "shutdown_grace_period": _duration,
    "log_level": _log_level,
    "containerd": _sub(
        ContainerdSection,
        {
            "address": _socket_address,
            "namespace": _nonempty,
            "snapshotter": _nonempty,
            "binary": _nonempty,
        },
    ),
    "cni": _sub(CniSection, {"bin_dirs": _dir_list, "conf_dir": _abs_str}),
    "registry": _registry,
    "stream_server": _sub(
        StreamServerSection, {"address": _nonempty, "port": _int_range(0, 65535)}
    ),
    "enable_tls_streaming": _bool,
    "x509_key_pair_streaming": _sub(
        X509KeyPair, {"tls_cert_file": _abs_or_empty, "tls_key_file": _abs_or_empty}
    ),
    "stream_idle_timeout": _positive_duration,
    "metrics": _sub(MetricsSection, {"address": _host_port}),
    "tracing": _sub(
        TracingSection,
        {
            "endpoint": _str,
            "insecure": _bool,
            "sampling_ratio": _ratio,
            "service_name": _str,
        },
    ),
    "checkpoint": _sub(CheckpointSection, {"criu_path": _abs_or_empty, "key_path": _abs_or_empty}),
    "nri": _sub(
        NriSection,
        {
            "disable": _bool,
            "socket_path": _abs_str,
            "disable_connections": _bool,
            "plugin_path": _abs_str,
            "plugin_config_path": _abs_str,
            "plugin_registration_timeout": _positive_duration,
            "plugin_request_timeout": _positive_duration,
        },
    ),
    "runtimes": _runtimes,
}


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document into a Config."""
    config = Config(**_section("", raw, _TOP))
    if config.default_runtime_name not in config.runtimes:
        raise _bad(
            "default_runtime_name",
            config.default_runtime_name,
            "one of the configured runtimes: " + ", ".join(sorted(config.runtimes)),
        )
    pair = config.x509_key_pair_streaming
    if bool(pair.tls_cert_file) != bool(pair.tls_key_file):
        raise ConfigError(
            "config keys 'x509_key_pair_streaming.tls_cert_file' and 'tls_key_file' go "
            "together: give both, or neither for a self-signed pair"
        )
    return config


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the file (or the default file when present), then apply command-line overrides.

    Overrides use the file's dotted key names (`listen`, `containerd.address`) and go through
    the same validation as the file.
    """
    raw: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_FILE
    if path is not None or DEFAULT_CONFIG_FILE.exists():
        try:
            raw = tomllib.loads(source.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(source)!r} does not exist") from None
        except OSError as err:
            raise ConfigError(f"config file {str(source)!r} cannot be read: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(source)!r} is not valid TOML: {err}") from None
    for dotted, value in (overrides or {}).items():
        table = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    try:
        return parse_config(raw)
    except ConfigError as err:
        if path is not None or DEFAULT_CONFIG_FILE.exists():
            raise ConfigError(f"{source}: {err}") from None
        raise
