"""CRIU on this host: the binary that checkpoints and restores containers, and whether it
works here.

runc runs CRIU for containerd's runc shim. criproxy names the binary to runc exactly (the
shim's `criu_path` option, `runc --criu PATH`) instead of leaving it to the shim's PATH,
so an older CRIU earlier in PATH is never picked. CRIU 3.x cannot dump on kernels that
map the vDSO as 6.x kernels do ("Unexpected rt vDSO area bounds"), so 4.0 is the floor;
`criu check` must also pass (it probes the kernel features a dump needs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_VERSION = (4, 0)
_VERSION = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
CHECK_TIMEOUT = 30.0


@dataclass(frozen=True)
class Criu:
    path: str
    """The binary found ("" when none)."""
    version: str
    problem: str
    """Why checkpoints cannot be made with it; "" when they can."""

    @property
    def usable(self) -> bool:
        return not self.problem


def version_of(text: str) -> tuple[int, ...] | None:
    """The version `criu --version` printed, as numbers."""
    match = _VERSION.search(text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def probe(configured: str) -> Criu:
    """The CRIU `[checkpoint] criu_path` names, else the first `criu` on PATH, checked.

    Blocking: runs `criu --version` and `criu check`."""
    path = configured or shutil.which("criu") or ""
    if not path:
        return Criu("", "", "no CRIU found: install CRIU >= 4.0 or set [checkpoint] criu_path")
    if not Path(path).is_file():
        return Criu(path, "", f"[checkpoint] criu_path {path} is not a file")
    try:
        shown = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Criu(path, "", f"CRIU {path} does not run: {err}")
    version = version_of(shown.stdout)
    if version is None:
        return Criu(path, "", f"CRIU {path} printed no version: {shown.stdout.strip()!r}")
    text = ".".join(map(str, version))
    if version < MIN_VERSION:
        floor = ".".join(map(str, MIN_VERSION))
        return Criu(path, text, f"CRIU {path} is {text}; checkpoints need CRIU >= {floor}")
    try:
        check = subprocess.run(
            [path, "check"], capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Criu(path, text, f"`{path} check` did not finish: {err}")
    if check.returncode != 0:
        said = (check.stderr or check.stdout).strip().splitlines()
        detail = said[-1] if said else f"exit status {check.returncode}"
        return Criu(path, text, f"`{path} check` fails on this host: {detail}")
    return Criu(path, text, "")


_usable: dict[str, Criu] = {}


def runc_path(configured: str) -> str:
    """The CRIU new containers' runc is told to run (`runc --criu`): the one a probe found
    usable, else the one a probe would check (`criu_path`, else the first `criu` on PATH),
    so a container made before any probe never falls back to the shim's PATH. runc runs it
    only for a checkpoint or a restore, and both are refused unless the probe passes.
    Never blocks on CRIU ("" when none is found)."""
    found = _usable.get(configured)
    if found is not None:
        return found.path
    return configured or shutil.which("criu") or ""


def cached(configured: str) -> Criu:
    """`probe`, kept once it found a usable CRIU; a missing or failing one is probed
    again on the next call, so a CRIU installed later is found without a restart."""
    found = _usable.get(configured)
    if found is None:
        found = probe(configured)
        if found.usable:
            _usable[configured] = found
    return found
