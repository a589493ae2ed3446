"""Reading files of a container's rootfs without mounting it.

The user of a container is resolved against its own /etc/passwd and /etc/group, as
containerd does by mounting the rootfs. The overlayfs and native snapshotters hand out
`overlay` or `bind` mounts whose directories can be read directly: the upper directory
first, then each lower one, honouring overlayfs whiteouts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from criproxy.containerd import Mount

_MAX_SIZE = 4 * 1024 * 1024


class UnreadableRootfs(Exception):
    """The mounts are of a kind this reader does not understand."""


def layer_dirs(mounts: Sequence[Mount]) -> list[Path]:
    """The directories a file is looked up in, topmost first."""
    if len(mounts) != 1:
        raise UnreadableRootfs(f"expected one rootfs mount, got {len(mounts)}")
    mount = mounts[0]
    if mount.type == "bind" or (mount.type == "" and "bind" in mount.options):
        return [Path(mount.source)]
    if mount.type == "overlay":
        dirs: list[Path] = []
        lower: list[Path] = []
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                dirs.append(Path(value))
            elif key == "lowerdir":
                lower = [Path(p) for p in value.split(":") if p]
        return dirs + lower
    raise UnreadableRootfs(f"cannot read a {mount.type!r} rootfs mount without mounting it")


def read_text(mounts: Sequence[Mount], path: str) -> str | None:
    """The text of `path` (absolute, inside the rootfs), None when it does not exist."""
    parts = [p for p in path.split("/") if p]
    for layer in layer_dirs(mounts):
        current = layer
        hidden = False
        for i, part in enumerate(parts):
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                break
            except NotADirectoryError:
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                hidden = True  # an overlayfs whiteout: deleted in this layer
                break
            if stat.S_ISLNK(st.st_mode):
                # Never follow a link of the image: read from here, an absolute one would
                # resolve against the host's root. Such a file reads as absent.
                hidden = True
                break
            if i == len(parts) - 1 and stat.S_ISREG(st.st_mode):
                with open(current, "rb") as f:
                    return f.read(_MAX_SIZE).decode("utf-8", "replace")
        if hidden:
            return None
    return None
