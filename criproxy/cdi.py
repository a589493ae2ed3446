"""CDI, the Container Device Interface: devices named `vendor.com/class=name`, described by
spec files (JSON or YAML) in `cdi_spec_dirs`, injected into a container's OCI spec as
containerd's CRI does for `ContainerConfig.CDI_devices`, the `cdi.k8s.io/` annotations and
NRI plugins' CDI adjustments.

A device's edits (env, device nodes with their cgroup rule, mounts, hooks, additional
groups) are applied, then its spec's own edits once per spec. A later directory's spec
overrides an earlier one's for the same device; two specs of one directory naming the same
device make it ambiguous. A device nobody describes fails the create: it is never dropped.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ANNOTATION_PREFIX = "cdi.k8s.io/"
_KIND = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_DEVICE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.:-]*$")
_HOOKS = {
    "prestart": "prestart",
    "createRuntime": "createRuntime",
    "createContainer": "createContainer",
    "startContainer": "startContainer",
    "poststart": "poststart",
    "poststop": "poststop",
}
MAX_SPEC_BYTES = 4 << 20


class CdiError(Exception):
    """A CDI device that cannot be injected; the message names it and why."""


@dataclass
class _Spec:
    path: Path
    edits: Mapping[str, Any]
    devices: dict[str, Mapping[str, Any]] = field(default_factory=dict)


def parse_name(name: str) -> tuple[str, str]:
    """`vendor.com/class=device` -> (kind, device)."""
    kind, sep, device = name.partition("=")
    if not sep or not _KIND.match(kind) or not _DEVICE.match(device):
        raise CdiError(f"{name!r} is not a CDI device name (vendor.com/class=device)")
    return kind, device


def annotated_devices(annotations: Mapping[str, str]) -> list[str]:
    """The devices named by `cdi.k8s.io/<anything>` annotations (comma-separated)."""
    names: list[str] = []
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            names += [n.strip() for n in annotations[key].split(",") if n.strip()]
    return names


def inject(spec: dict[str, Any], names: Sequence[str], spec_dirs: Sequence[str]) -> None:
    """Resolve `names` through the spec files and apply their edits to `spec`. Blocking."""
    if not names:
        return
    registry, broken = _load(spec_dirs)
    resolved: list[tuple[_Spec, Mapping[str, Any]]] = []
    missing: list[str] = []
    for name in dict.fromkeys(names):
        kind, device = parse_name(name)
        found = registry.get(kind, {}).get(device)
        if found is None:
            missing.append(name)
        else:
            resolved.append(found)
    if missing:
        skipped = f" (spec files skipped: {'; '.join(broken)})" if broken else ""
        raise CdiError(
            f"unresolvable CDI devices {', '.join(missing)}: no spec in "
            f"{', '.join(spec_dirs)} describes them{skipped}"
        )
    seen_specs: list[_Spec] = []
    edits = [(owner, entry.get("containerEdits") or {}) for owner, entry in resolved]
    for owner, _ in resolved:
        if owner not in seen_specs:
            seen_specs.append(owner)
    edits += [(owner, owner.edits) for owner in seen_specs]
    for owner, edit in edits:
        try:
            _apply(spec, edit, owner.path)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CdiError(f"CDI spec {owner.path} has malformed edits: {err!r}") from None


def _load(
    spec_dirs: Sequence[str],
) -> tuple[dict[str, dict[str, tuple[_Spec, Mapping[str, Any]]]], list[str]]:
    """kind -> device -> (its spec, its entry), later directories winning; and the files
    skipped as unreadable or malformed (one bad file does not take every device down)."""
    registry: dict[str, dict[str, tuple[_Spec, Mapping[str, Any]]]] = {}
    broken: list[str] = []
    for directory in spec_dirs:
        this_dir: dict[tuple[str, str], Path] = {}
        try:
            files = sorted(Path(directory).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in files:
            if path.suffix not in (".json", ".yaml", ".yml"):
                continue
            try:
                kind, spec = _read(path)
            except CdiError as err:
                broken.append(str(err))
                continue
            for name, device in spec.devices.items():
                if (kind, name) in this_dir:
                    raise CdiError(
                        f"CDI device {kind}={name} is described twice, in "
                        f"{this_dir[kind, name]} and {path}"
                    )
                this_dir[kind, name] = path
                registry.setdefault(kind, {})[name] = (spec, device)
    return registry, broken


def _read(path: Path) -> tuple[str, _Spec]:
    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CdiError(f"CDI spec {path} is not a regular file")
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise CdiError(f"cannot read CDI spec {path}: {err.strerror or err}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise CdiError(f"CDI spec {path} is over {MAX_SPEC_BYTES} bytes")
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as err:
        raise CdiError(f"CDI spec {path} does not parse: {err}") from None
    if not isinstance(data, dict):
        raise CdiError(f"CDI spec {path} is not a mapping")
    kind = data.get("kind")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise CdiError(f"CDI spec {path} has no valid kind (vendor.com/class)")
    spec = _Spec(path, _mapping(data.get("containerEdits"), path))
    for device in data.get("devices") or []:
        name = device.get("name") if isinstance(device, dict) else None
        if not isinstance(name, str) or not _DEVICE.match(name):
            raise CdiError(f"CDI spec {path} has a device without a valid name")
        _mapping(device.get("containerEdits"), path)
        spec.devices[name] = device
    return kind, spec


def _mapping(value: Any, path: Path) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CdiError(f"CDI spec {path}: containerEdits is not a mapping")
    return value


def _apply(spec: dict[str, Any], edits: Mapping[str, Any], source: Path) -> None:
    """One set of CDI container edits into the OCI spec (in place)."""
    process = spec.setdefault("process", {})
    if edits.get("env"):
        env: list[str] = process.setdefault("env", [])
        for item in edits["env"]:
            name = str(item).split("=", 1)[0]
            env[:] = [e for e in env if e.split("=", 1)[0] != name]
            env.append(str(item))
    linux = spec.setdefault("linux", {})
    for node in edits.get("deviceNodes") or []:
        _device_node(linux, node, source)
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    for m in edits.get("mounts") or []:
        entry: dict[str, Any] = {
            "destination": str(m["containerPath"]),
            "source": str(m["hostPath"]),
            "type": str(m.get("type") or "bind"),
        }
        entry["options"] = [str(o) for o in m.get("options") or ["bind"]]
        mounts[:] = [x for x in mounts if x.get("destination") != entry["destination"]]
        mounts.append(entry)
    for hook in edits.get("hooks") or []:
        stage = _HOOKS.get(str(hook.get("hookName", "")))
        if stage is None:
            raise CdiError(f"CDI spec {source}: unknown hook {hook.get('hookName')!r}")
        oci: dict[str, Any] = {"path": str(hook["path"])}
        for key in ("args", "env"):
            if hook.get(key):
                oci[key] = [str(v) for v in hook[key]]
        if hook.get("timeout") is not None:
            oci["timeout"] = int(hook["timeout"])
        spec.setdefault("hooks", {}).setdefault(stage, []).append(oci)
    if edits.get("additionalGids"):
        user = process.setdefault("user", {})
        groups = user.setdefault("additionalGids", [])
        groups += [int(g) for g in edits["additionalGids"] if int(g) not in groups]
    if edits.get("intelRdt") or edits.get("netDevices"):
        raise CdiError(f"CDI spec {source}: intelRdt and netDevices need runc >= 1.3")


def _device_node(linux: dict[str, Any], node: Mapping[str, Any], source: Path) -> None:
    path = str(node.get("path", ""))
    if not path.startswith("/"):
        raise CdiError(f"CDI spec {source}: a device node needs an absolute path")
    host = str(node.get("hostPath") or path)
    kind: Any = node.get("type")
    major: Any = node.get("major")
    minor: Any = node.get("minor")
    mode = node.get("fileMode")
    if kind is None or major is None or (minor is None and kind != "p"):
        try:
            st = os.stat(host)
        except OSError as err:
            raise CdiError(f"CDI device node {host}: {err.strerror or err}") from None
        if stat.S_ISCHR(st.st_mode):
            found = "c"
        elif stat.S_ISBLK(st.st_mode):
            found = "b"
        else:
            raise CdiError(f"CDI device node {host} is not a device")
        kind = kind or found
        major = os.major(st.st_rdev) if major is None else major
        minor = os.minor(st.st_rdev) if minor is None else minor
        mode = stat.S_IMODE(st.st_mode) if mode is None else mode
    entry: dict[str, Any] = {"path": path, "type": kind, "major": int(major), "minor": int(minor)}
    if mode is not None:
        entry["fileMode"] = int(mode)
    for key in ("uid", "gid"):
        if node.get(key) is not None:
            entry[key] = int(node[key])
    devices: list[dict[str, Any]] = linux.setdefault("devices", [])
    devices[:] = [d for d in devices if d.get("path") != path]
    devices.append(entry)
    rule = {
        "allow": True,
        "type": kind,
        "major": int(major),
        "minor": int(minor),
        "access": str(node.get("permissions") or "rwm"),
    }
    linux.setdefault("resources", {}).setdefault("devices", []).append(rule)
