"""The spec containerd starts every Linux container from, before any option is applied.

Each function returns a fresh object, so callers may change what they get. Go's JSON
encoding of runtime-spec drops empty optional fields; these dicts are built the same way.
"""

from __future__ import annotations

import posixpath
from typing import Any

OCI_VERSION = "1.0.2-dev"
"""The runtime-spec version containerd 1.6 (Debian 12's) writes."""

DEFAULT_ROOTFS_PATH = "rootfs"
"""The rootfs, relative to the bundle the shim creates."""

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""What containerd adds when a container's env has no PATH (not part of the default spec)."""

DEFAULT_RLIMIT_NOFILE = 1024

_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)

_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # destination, type, source, options
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/run", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
)


def default_capabilities() -> list[str]:
    """The capabilities a container gets unless it asks otherwise (docker's set)."""
    return list(_CAPABILITIES)


def default_namespaces() -> list[dict[str, Any]]:
    """New pid, ipc, uts, mount and network namespaces, in containerd's order."""
    return [{"type": kind} for kind in _NAMESPACES]


def default_masked_paths() -> list[str]:
    return list(_MASKED_PATHS)


def default_readonly_paths() -> list[str]:
    return list(_READONLY_PATHS)


def default_mounts() -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only) and /run."""
    return [
        {"destination": dest, "type": kind, "source": source, "options": list(options)}
        for dest, kind, source, options in _MOUNTS
    ]


def default_cgroups_path(namespace: str, container_id: str) -> str:
    """`/<containerd namespace>/<id>`: where a container goes when nothing else is said."""
    return posixpath.normpath(posixpath.join("/", namespace, container_id))


def default_spec(namespace: str, container_id: str) -> dict[str, Any]:
    """containerd's default Linux spec for container `container_id` in `namespace`.

    Root 0:0 in `/` with no env and no args, the default capabilities as bounding,
    effective and permitted sets, RLIMIT_NOFILE 1024, no_new_privileges, the default
    mounts, masked and read-only paths, five new namespaces, and a device cgroup that
    denies everything.
    """
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": default_capabilities(),
                "effective": default_capabilities(),
                "permitted": default_capabilities(),
            },
            "rlimits": [
                {
                    "type": "RLIMIT_NOFILE",
                    "hard": DEFAULT_RLIMIT_NOFILE,
                    "soft": DEFAULT_RLIMIT_NOFILE,
                }
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS_PATH},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": default_cgroups_path(namespace, container_id),
            "namespaces": default_namespaces(),
            "maskedPaths": default_masked_paths(),
            "readonlyPaths": default_readonly_paths(),
        },
    }
