"""The files a pod's containers share: hostname, hosts, resolv.conf, and /dev/shm.

They live under the sandbox's directories and are bind-mounted into every container of
the pod (by the containers issue); they go when the sandbox is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from criproxy.errors import Internal

if TYPE_CHECKING:
    from criproxy.sandbox.model import DnsSettings

DEFAULT_SHM_SIZE = 64 * 1024 * 1024
"""containerd's default size of a pod's /dev/shm."""
_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8

DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def resolv_conf(dns: DnsSettings | None, host_file: Path = Path("/etc/resolv.conf")) -> str:
    """The pod's resolv.conf: from its DNS config, else the host's (as containerd does)."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        try:
            return host_file.read_text()
        except OSError:
            return ""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_file(
    host_network: bool, ip: str, hostname: str, host_file: Path = Path("/etc/hosts")
) -> str:
    if host_network:
        try:
            return host_file.read_text()
        except OSError:
            return DEFAULT_HOSTS
    text = DEFAULT_HOSTS
    if ip and hostname:
        text += f"{ip}\t{hostname}\n"
    return text


def pod_hostname(configured: str, host_network: bool) -> str:
    return configured or (socket.gethostname() if host_network else "")


def write_files(directory: Path, **contents: str) -> None:
    """Write pod files atomically, e.g. `hosts=...` (blocking: call from a worker thread).

    `resolv_conf` is written as `resolv.conf`.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    for key, content in contents.items():
        name = "resolv.conf" if key == "resolv_conf" else key
        tmp = directory / f".{name}.tmp"
        tmp.write_text(content)
        os.chmod(tmp, 0o644)
        tmp.replace(directory / name)


def mount_shm(path: Path, size: int = DEFAULT_SHM_SIZE) -> None:
    """A tmpfs of `size` bytes for the pod's /dev/shm (blocking)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.ismount(path):
        return
    options = f"mode=1777,size={size}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"shm", str(path).encode(), b"tmpfs", flags, options) != 0:
        errno = ctypes.get_errno()
        raise Internal(f"cannot mount the pod's /dev/shm at {path}: {os.strerror(errno)}")


def remove_dir(path: Path, mounts: tuple[str, ...] = ()) -> None:
    """Unmount the named mount points below `path` (e.g. `shm`), then remove it (blocking).

    rmtree does not cross into a mount that is still there: it fails instead.
    """
    if not path.exists():
        return
    for name in mounts:
        _libc.umount2(str(path / name).encode(), _MNT_DETACH)  # not mounted: EINVAL, fine
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
