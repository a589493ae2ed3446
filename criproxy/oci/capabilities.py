"""Linux capability names, masks, and the CRI add/drop rules containerd applies.

The caller reads its own bounding set (`CapBnd` in /proc/self/status: what runc can grant
a container) and turns it into names here; "ALL" and privileged containers mean
exactly those names, never a fixed list, because runc cannot grant a capability its
caller does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

KNOWN: tuple[str, ...] = (
    "CAP_CHOWN",  # 0
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",  # 5
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",  # 10
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",  # 15
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",  # 20
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",  # 25
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",  # 30
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",  # 35
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",  # 40
)
"""Every capability by its kernel number (index), up to Linux 5.9's CAP_CHECKPOINT_RESTORE."""

ALL = "ALL"


def from_mask(mask: int) -> tuple[str, ...]:
    """The names of the capabilities set in `mask` (a /proc status `Cap*:` bitmap), in kernel
    order. Bits above the last known capability are ignored: no runtime can name them.
    """
    return tuple(name for bit, name in enumerate(KNOWN) if mask >> bit & 1)


def normalize(name: str) -> str:
    """`sys_admin`, `SYS_ADMIN` and `CAP_SYS_ADMIN` all name CAP_SYS_ADMIN; `all` is ALL.

    CRI names carry no `CAP_` prefix (containerd always adds one); accepting both keeps a
    prefixed name from becoming `CAP_CAP_...`.
    """
    upper = name.upper()
    if upper == ALL or upper.startswith("CAP_"):
        return upper
    return f"CAP_{upper}"


def resolve(
    defaults: Iterable[str],
    add: Iterable[str],
    drop: Iterable[str],
    available: Iterable[str],
    *,
    privileged: bool = False,
) -> list[str]:
    """The bounding/effective/permitted set of a container (containerd's WithCapabilities).

    Starting from `defaults`: `ALL` in add means every `available` capability, `ALL` in
    drop means none; the named adds are then appended and the named drops removed, so
    `add=[ALL], drop=[CHOWN]` is everything but CAP_CHOWN. A privileged container gets all
    of `available`. The result is restricted to `available` (order kept): runc would fail
    the start on a capability its caller lacks, and a kubelet pod asking for one (e.g.
    CAP_SYS_RESOURCE on a host whose bounding set lacks it) should run without it instead.
    """
    held = [normalize(c) for c in available]
    if privileged:
        return list(dict.fromkeys(held))
    adds = [normalize(c) for c in add]
    drops = [normalize(c) for c in drop]
    caps = [normalize(c) for c in defaults]
    if ALL in adds:
        caps = list(held)
    if ALL in drops:
        caps = []
    for cap in adds:
        if cap != ALL and cap not in caps:
            caps.append(cap)
    dropped = set(drops)
    allowed = set(held)
    return list(dict.fromkeys(c for c in caps if c not in dropped and c in allowed))
