"""The `io.kubernetes.cri.*` annotations containerd's CRI plugin puts on OCI specs.

Runtimes and shims (kata, gVisor, NRI plugins) read these, so the keys are containerd's.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_TYPE_SANDBOX = "sandbox"
CONTAINER_TYPE_CONTAINER = "container"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_LOG_DIRECTORY = "io.kubernetes.cri.sandbox-log-directory"
SANDBOX_IMAGE_NAME = "io.kubernetes.cri.podsandbox.image-name"
SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"
UNTRUSTED_WORKLOAD = "io.kubernetes.cri.untrusted-workload"


NEVER_PASSED = frozenset({"org.criu.config"})
"""Annotations no pattern lets through: runc hands `org.criu.config` to CRIU as a config
file on every checkpoint and restore, and a CRIU config can run host commands as root
(`action-script`)."""


def passthrough_annotations(
    pod_annotations: Mapping[str, str], patterns: Iterable[str]
) -> dict[str, str]:
    """The pod annotations whose key matches one of a runtime's `pod_annotations` patterns.

    Patterns are Go `path.Match` globs: `*` and `?` stop at `/`, `[...]`/`[^...]` classes,
    `\\` escapes; a malformed pattern matches nothing.
    """
    compiled = [m for m in (_glob(p) for p in patterns) if m is not None]
    return {
        key: value
        for key, value in pod_annotations.items()
        if key not in NEVER_PASSED and any(m.fullmatch(key) for m in compiled)
    }


class _BadPattern(Exception):
    pass


def _escaped_char(pattern: str, i: int) -> tuple[str, int]:
    """One character of a class range (maybe `\\`-escaped); something must follow it."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise _BadPattern
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise _BadPattern
    if i + 1 >= len(pattern):
        raise _BadPattern  # the class is never closed
    return pattern[i], i + 1


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the class starting after `[` at `i`; return (regex, index after `]`)."""
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while not (i < len(pattern) and pattern[i] == "]" and ranges):
        lo, i = _escaped_char(pattern, i)
        hi = lo
        if pattern[i] == "-":
            hi, i = _escaped_char(pattern, i + 1)
        ranges.append((lo, hi))
    body = "".join(f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in ranges if lo <= hi)
    if negated:
        return (f"[^{body}]" if body else "(?s:.)"), i + 1
    return (f"[{body}]" if body else "(?!)"), i + 1


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str] | None:
    out: list[str] = []
    i = 0
    try:
        while i < len(pattern):
            char = pattern[i]
            if char == "*":
                out.append("[^/]*")
                i += 1
            elif char == "?":
                out.append("[^/]")
                i += 1
            elif char == "\\":
                if i + 1 >= len(pattern):
                    raise _BadPattern
                out.append(re.escape(pattern[i + 1]))
                i += 2
            elif char == "[":
                regex, i = _char_class(pattern, i + 1)
                out.append(regex)
            else:
                out.append(re.escape(char))
                i += 1
    except _BadPattern:
        return None
    return re.compile("".join(out), re.DOTALL)
