"""NRI's Linux adjustments: devices, cgroup resources, sysctls and namespaces, merged
between plugins under NRI's ownership rules and written into an OCI spec.

What the runc installed beside criproxy cannot apply (I/O priority, scheduler, memory
policy, network devices, need runc >= 1.2) and what would move a container out of
criproxy's hands (its cgroup path, its seccomp profile, RDT and block I/O classes, for
which criproxy has no class configuration) is refused by name, never dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from criproxy._generated.nri import api_pb2 as nri
from criproxy.oci.container import ContainerResources, HugepageLimit

if TYPE_CHECKING:
    from collections.abc import Callable

_REFUSED = {
    "cgroups_path": "a cgroup path (criproxy places containers' cgroups)",
    "io_priority": "I/O priority (runc >= 1.2)",
    "seccomp_policy": "a seccomp profile (it comes from the CRI request)",
    "net_devices": "network devices (runc >= 1.3)",
    "scheduler": "a scheduler policy (runc >= 1.2)",
    "rdt": "RDT (no RDT classes configured)",
    "memory_policy": "a memory policy (runc >= 1.3)",
}
_REFUSED_RESOURCES = {
    "blockio_class": "a block I/O class (no classes configured)",
    "rdt_class": "an RDT class (no classes configured)",
}

_MEMORY = {
    "limit": "limit",
    "reservation": "reservation",
    "swap": "swap",
    "kernel": "kernel",
    "kernel_tcp": "kernelTCP",
    "swappiness": "swappiness",
    "disable_oom_killer": "disableOOMKiller",
}
_CPU = {
    "shares": "shares",
    "quota": "quota",
    "period": "period",
    "realtime_runtime": "realtimeRuntime",
    "realtime_period": "realtimePeriod",
    "cpus": "cpus",
    "mems": "mems",
}


def refused(linux: nri.LinuxContainerAdjustment) -> list[str]:
    """What of `linux` criproxy does not apply, named for the plugin's error."""
    out = [why for name, why in _REFUSED.items() if _present(linux, name)]
    if linux.HasField("resources"):
        out += [why for name, why in _REFUSED_RESOURCES.items() if _present(linux.resources, name)]
        if linux.resources.memory.HasField("use_hierarchy"):
            out.append("memory use_hierarchy (cgroup v1 only, gone from the OCI spec)")
    return out


def refused_resources(resources: nri.LinuxResources) -> list[str]:
    """What of an update criproxy does not apply: device rules too (an update replaces a
    running container's whole device list)."""
    wrapped = nri.LinuxContainerAdjustment(resources=resources)
    devices = ["device cgroup rules in an update"] if resources.devices else []
    return refused(wrapped) + devices


def _present(message: Any, name: str) -> bool:
    value = getattr(message, name)
    if isinstance(value, str):
        return bool(value)
    if hasattr(value, "__len__"):  # lists and maps
        return bool(len(value))
    return bool(message.HasField(name))


def merge_linux(
    merged: nri.LinuxContainerAdjustment,
    container: nri.LinuxContainer,
    adjust: nri.LinuxContainerAdjustment,
    claim: Callable[[str, str], None],
    clear: Callable[[str, str], None],
) -> None:
    """One plugin's Linux adjustment into `merged` and into the container the next plugin
    sees; `claim(kind, key)` raises on a conflict, `clear` records a removal."""
    for device in adjust.devices:
        path = device.path.removeprefix("-")
        kept = [d for d in merged.devices if d.path.removeprefix("-") != path]
        del merged.devices[:]
        merged.devices.extend(kept)
        if device.path.startswith("-"):
            clear("Devices", path)
        else:
            claim("Devices", path)
        merged.devices.append(device)
    if adjust.HasField("resources"):
        merge_resources(merged.resources, adjust.resources, claim)
        merge_resources(container.resources, adjust.resources, lambda kind, key: None)
    for key, value in adjust.sysctl.items():
        claim("Sysctl", key)
        merged.sysctl[key] = value
    for ns in adjust.namespaces:
        kind = ns.type.removeprefix("-")
        claim("Namespaces", kind)
        others = [n for n in merged.namespaces if n.type.removeprefix("-") != kind]
        del merged.namespaces[:]
        merged.namespaces.extend([*others, ns])
    if adjust.HasField("oom_score_adj"):
        claim("OomScoreAdj", "")
        merged.oom_score_adj.CopyFrom(adjust.oom_score_adj)
        container.oom_score_adj.CopyFrom(adjust.oom_score_adj)


def merge_resources(
    merged: nri.LinuxResources, adjust: nri.LinuxResources, claim: Callable[[str, str], None]
) -> None:
    """Resources field by field: each set field is owned by the plugin that set it."""
    for group in ("memory", "cpu", "pids"):
        if not adjust.HasField(group):
            continue
        for field, value in getattr(adjust, group).ListFields():
            claim(group.capitalize(), field.name)
            target = getattr(merged, group)
            if field.message_type is not None:
                getattr(target, field.name).CopyFrom(value)
            else:
                setattr(target, field.name, value)
    for page in adjust.hugepage_limits:
        claim("HugepageLimits", page.page_size)
        kept = [h for h in merged.hugepage_limits if h.page_size != page.page_size]
        del merged.hugepage_limits[:]
        merged.hugepage_limits.extend([*kept, page])
    for key, value in adjust.unified.items():
        claim("Unified", key)
        merged.unified[key] = value
    merged.devices.extend(adjust.devices)  # device rules accumulate, in plugin order


def apply_linux(spec: dict[str, Any], adjust: nri.LinuxContainerAdjustment) -> None:
    """The merged Linux adjustment into the OCI spec (in place)."""
    linux = spec.setdefault("linux", {})
    devices: list[dict[str, Any]] = linux.setdefault("devices", [])
    rules: list[dict[str, Any]] = linux.setdefault("resources", {}).setdefault("devices", [])
    for device in adjust.devices:
        path = device.path.removeprefix("-")
        devices[:] = [d for d in devices if d.get("path") != path]
        if device.path.startswith("-"):
            continue
        entry: dict[str, Any] = {
            "path": path,
            "type": device.type,
            "major": device.major,
            "minor": device.minor,
        }
        optional = {"file_mode": "fileMode", "uid": "uid", "gid": "gid"}
        for field, value in device.ListFields():
            if field.name in optional:
                entry[optional[field.name]] = value.value
        devices.append(entry)
        # the device is usable, not just present (containerd adds the same rule)
        rules.append(
            {
                "allow": True,
                "type": device.type,
                "major": device.major,
                "minor": device.minor,
                "access": "rwm",
            }
        )
    if not devices:
        linux.pop("devices")
    if adjust.HasField("resources"):
        apply_resources(linux["resources"], adjust.resources)
    if not linux["resources"].get("devices"):
        linux["resources"].pop("devices", None)
    if not linux["resources"]:
        linux.pop("resources")
    if adjust.sysctl:
        linux.setdefault("sysctl", {}).update(adjust.sysctl)
    namespaces: list[dict[str, Any]] = linux.setdefault("namespaces", [])
    for ns in adjust.namespaces:
        kind = ns.type.removeprefix("-")
        namespaces[:] = [n for n in namespaces if n.get("type") != kind]
        if not ns.type.startswith("-"):
            namespaces.append({"type": kind, **({"path": ns.path} if ns.path else {})})
    if adjust.HasField("oom_score_adj"):
        spec.setdefault("process", {})["oomScoreAdj"] = adjust.oom_score_adj.value


def apply_resources(oci: dict[str, Any], adjust: nri.LinuxResources) -> None:
    """NRI resources over an OCI LinuxResources object (in place): set fields win."""
    for group, message in adjust.ListFields():
        names = {"memory": _MEMORY, "cpu": _CPU}.get(group.name)
        if names is not None:
            part = oci.setdefault(group.name, {})
            for field, value in message.ListFields():
                if field.name in names:
                    part[names[field.name]] = value if isinstance(value, str) else value.value
    if adjust.HasField("pids"):
        oci["pids"] = {"limit": adjust.pids.limit}
    if adjust.hugepage_limits:
        pages = {h["pageSize"]: h for h in oci.get("hugepageLimits", [])}
        for h in adjust.hugepage_limits:
            pages[h.page_size] = {"pageSize": h.page_size, "limit": h.limit}
        oci["hugepageLimits"] = list(pages.values())
    if adjust.unified:
        oci.setdefault("unified", {}).update(adjust.unified)
    for rule in adjust.devices:
        entry: dict[str, Any] = {"allow": rule.allow, "access": rule.access}
        if rule.type:
            entry["type"] = rule.type
        if rule.HasField("major"):
            entry["major"] = rule.major.value
        if rule.HasField("minor"):
            entry["minor"] = rule.minor.value
        oci.setdefault("devices", []).append(entry)


def cri_resources(adjust: nri.LinuxResources) -> ContainerResources:
    """What of NRI resources CRI's ContainerResources can say (the status reports it)."""
    memory, cpu = adjust.memory, adjust.cpu
    return ContainerResources(
        cpu_period=cpu.period.value,
        cpu_quota=cpu.quota.value,
        cpu_shares=cpu.shares.value,
        memory_limit_in_bytes=memory.limit.value,
        cpuset_cpus=cpu.cpus,
        cpuset_mems=cpu.mems,
        hugepage_limits=tuple(HugepageLimit(h.page_size, h.limit) for h in adjust.hugepage_limits),
        unified=dict(adjust.unified),
        memory_swap_limit_in_bytes=memory.swap.value,
    )


def nri_resources(res: ContainerResources) -> nri.LinuxResources:
    """CRI resources as NRI's message (what an UpdateContainer event carries)."""
    out = nri.LinuxResources(unified=dict(res.unified))
    for value, target in (
        (res.memory_limit_in_bytes, out.memory.limit),
        (res.memory_swap_limit_in_bytes, out.memory.swap),
        (res.cpu_quota, out.cpu.quota),
    ):
        if value:
            target.value = value
    if res.cpu_shares:
        out.cpu.shares.value = res.cpu_shares
    if res.cpu_period:
        out.cpu.period.value = res.cpu_period
    out.cpu.cpus, out.cpu.mems = res.cpuset_cpus, res.cpuset_mems
    for h in res.hugepage_limits:
        out.hugepage_limits.append(nri.HugepageLimit(page_size=h.page_size, limit=h.limit))
    return out


def from_oci(oci: dict[str, Any]) -> nri.LinuxResources:
    """An OCI LinuxResources object as NRI's message (what plugins see of a container)."""
    out = nri.LinuxResources()
    for group, names in (("memory", _MEMORY), ("cpu", _CPU)):
        part = oci.get(group) or {}
        target = getattr(out, group)
        for name, key in names.items():
            if key not in part:
                continue
            if isinstance(part[key], str):
                setattr(target, name, part[key])
            else:
                getattr(target, name).value = part[key]
    if "pids" in oci:
        out.pids.limit = int(oci["pids"].get("limit", 0))
    for h in oci.get("hugepageLimits") or []:
        out.hugepage_limits.append(nri.HugepageLimit(page_size=h["pageSize"], limit=h["limit"]))
    out.unified.update(oci.get("unified") or {})
    for rule in oci.get("devices") or []:
        device = nri.LinuxDeviceCgroup(
            allow=bool(rule.get("allow")), type=rule.get("type", ""), access=rule.get("access", "")
        )
        if rule.get("major") is not None:
            device.major.value = rule["major"]
        if rule.get("minor") is not None:
            device.minor.value = rule["minor"]
        out.devices.append(device)
    return out
