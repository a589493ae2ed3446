"""Pre-installed NRI plugins: executables named `NN-name` in `plugin_path` that criproxy
starts itself, as containerd does, each handed one end of a socket pair as fd 3
(`NRI_PLUGIN_SOCKET=3`, with `NRI_PLUGIN_NAME` and `NRI_PLUGIN_IDX`) and its configuration
from `plugin_config_path` (`NN-name.conf`, else `name.conf`) in Configure.

Each start of criproxy starts them anew: after a kill -9 the old ones see their socket
close and exit, and the new ones are synchronised with every pod and container.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^([0-9]{2})-([a-zA-Z0-9_.+-]+)$")


@dataclass(frozen=True)
class Installed:
    index: str
    name: str
    path: Path
    config: str


@dataclass
class Launched:
    plugin: Installed
    pid: int
    conn: socket.socket
    """criproxy's end of the socket pair."""
    output: int
    """The read end of the plugin's stdout and stderr."""


def discover(plugin_path: str, config_path: str) -> tuple[list[Installed], list[str]]:
    """The executables in `plugin_path` and their configurations, by index, and what was
    refused (one misnamed file does not keep the others from starting). Blocking."""
    directory = Path(plugin_path)
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return [], []
    found: list[Installed] = []
    refused: list[str] = []
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode) or not mode & 0o111:
            continue
        match = _NAME.match(entry.name)
        if match is None:
            refused.append(f"{entry}: a pre-installed NRI plugin is named NN-name (two digits)")
            continue
        index, name = match.groups()
        found.append(Installed(index, name, entry, _config(Path(config_path), index, name)))
    return sorted(found, key=lambda p: (p.index, p.name)), refused


def _config(directory: Path, index: str, name: str) -> str:
    for candidate in (directory / f"{index}-{name}.conf", directory / f"{name}.conf"):
        try:
            return candidate.read_text()
        except FileNotFoundError:
            continue
    return ""


def launch(plugin: Installed) -> Launched:
    """Start the plugin with its end of a fresh socket pair as fd 3. Blocking."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = os.posix_spawn(
            str(plugin.path),
            [str(plugin.path)],
            {
                "NRI_PLUGIN_NAME": plugin.name,
                "NRI_PLUGIN_IDX": plugin.index,
                "NRI_PLUGIN_SOCKET": "3",
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            },
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_DUP2, write_end, 2),
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            ],
            setsid=True,  # a signal to criproxy's process group is not theirs
        )
    except BaseException:
        ours.close()
        os.close(read_end)
        raise
    finally:
        theirs.close()
        os.close(write_end)
        os.close(devnull)
    return Launched(plugin, pid, ours, read_end)


def stop(launched: Launched) -> None:
    """Kill the plugin and reap it (as containerd does once it drops one). Blocking."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(launched.pid, signal.SIGKILL)
    reap(launched)


def reap(launched: Launched) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(launched.pid, 0)
