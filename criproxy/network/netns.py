"""Network namespaces pinned as files, as containerd's CRI does (`pkg/netns/netns_linux.go`).

A pod's netns must outlive every process in it (the pause container may die and be
restarted, CNI DEL must still reach it), so it is pinned by bind-mounting the nsfs inode
onto a plain file. The namespace is made by `unshare(CLONE_NEWNET)` on a dedicated,
short-lived thread which is put back into its original netns (and exits anyway), so no
thread that runs other code ever leaves the host's netns. Python 3.11 has no
`os.unshare`/`os.setns`, hence the few libc calls through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.errors import AlreadyExists, Internal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "create_netns",
    "create_userns_netns",
    "is_netns",
    "remove_netns",
    "remove_pin",
    "unpin_netns",
]

log = structlog.get_logger("criproxy.network.netns")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: which kind of namespace it is (Linux >= 4.11)
_MAX_UNMOUNTS = 8  # stacked bind mounts on one pin are possible; each umount peels one

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _nsfs_dev() -> int:
    """The device of the (single) nsfs superblock, which every namespace inode shares."""
    return os.stat("/proc/self/ns/net").st_dev


def is_netns(path: Path) -> bool:
    """True when `path` is a mounted network namespace (not a bare or missing pin file)."""
    try:
        if os.stat(path).st_dev != _nsfs_dev():
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def _loopback_up() -> None:
    """Bring `lo` up in the calling thread's netns: what CNI's loopback plugin does for a
    pod, without a plugin process per pod (and its DEL: lo dies with the netns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _on_netns_thread(name: str, enter: Callable[[], None], body: Callable[[], None]) -> None:
    """Run `body` once `enter` has moved the thread into another netns, on a dedicated
    thread that is put back into the host's netns and ends, so no thread that runs other
    code ever leaves it."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            failure.append(err)
            return
        try:
            enter()
            try:
                body()
            finally:
                # If this fails the thread still ends right here and runs nothing else.
                _check(_libc.setns(original, _CLONE_NEWNET), "setns back to the host netns")
        except BaseException as err:
            failure.append(err)
        finally:
            os.close(original)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _in_pinned_netns(netns: Path, name: str, body: Callable[[], None]) -> None:
    """`body` on a thread that entered the pinned netns `netns` (setns is per thread)."""
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _on_netns_thread(
            name,
            lambda: _check(_libc.setns(target, _CLONE_NEWNET), f"setns into {netns}"),
            body,
        )
    finally:
        os.close(target)


def _loopback_up_in(netns: Path) -> None:
    """`_loopback_up` inside a pinned netns."""
    _in_pinned_netns(netns, f"criproxy-lo-{netns.name}", _loopback_up)


def _pin_new_netns(path: Path) -> None:
    """Create a netns (its `lo` up) and bind-mount it onto `path`."""

    def pin() -> None:
        _loopback_up()
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), b"none", _MS_BIND, None),
            f"bind mount of the new netns onto {path}",
        )

    _on_netns_thread(
        f"criproxy-netns-{path.name}",
        lambda: _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)"),
        pin,
    )


def _pin_userns_netns(net: Path, user: Path, uid_map: str, gid_map: str) -> None:
    """A user namespace with these id maps, and a netns owned by it, pinned at `user` and
    `net`. The netns must belong to the pod's user namespace, or the pod cannot mount
    sysfs. A short-lived `unshare` process makes both; criproxy writes its id maps (as root
    in the parent namespace may) and pins them before it goes."""
    proc = subprocess.Popen(
        ["unshare", "--user", "--net", "sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                message = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise OSError(errno.ECHILD, f"unshare --user --net failed: {message.strip()}")
            time.sleep(0.002)
        with open(f"/proc/{proc.pid}/uid_map", "w") as f:
            f.write(uid_map)
        with open(f"/proc/{proc.pid}/gid_map", "w") as f:
            f.write(gid_map)
        for kind, pin in (("user", user), ("net", net)):
            source = os.fsencode(f"/proc/{proc.pid}/ns/{kind}")
            _check(
                _libc.mount(source, os.fsencode(pin), b"none", _MS_BIND, None),
                f"bind mount of the pod's {kind} namespace onto {pin}",
            )
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _create_userns_netns(
    directory: Path, name: str, user: Path, uid_map: str, gid_map: str
) -> Path:
    path = directory / name
    made: list[Path] = []
    try:
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        user.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for pin in (path, user):
            os.close(os.open(pin, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            made.append(pin)
    except OSError as err:
        for pin in made:
            pin.unlink(missing_ok=True)
        if isinstance(err, FileExistsError):
            raise AlreadyExists(f"namespace pins for {name} exist already") from None
        raise Internal(f"cannot create namespace pins for {name}: {err}") from None
    try:
        _pin_userns_netns(path, user, uid_map, gid_map)
        _loopback_up_in(path)
    except BaseException as err:
        _remove(path)
        _remove(user)
        if isinstance(err, OSError):
            raise Internal(f"cannot create the pod's user and network namespaces: {err}") from None
        raise
    return path


def _create(directory: Path, name: str) -> Path:
    path = directory / name
    try:
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
    except FileExistsError:
        raise AlreadyExists(f"network namespace pin {path} exists already") from None
    except OSError as err:
        raise Internal(f"cannot create network namespace pin {path}: {err}") from None
    try:
        _pin_new_netns(path)
    except OSError as err:
        _remove(path)
        hint = " (criproxy needs root: CAP_SYS_ADMIN)" if err.errno == errno.EPERM else ""
        raise Internal(f"cannot create network namespace at {path}: {err}{hint}") from None
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: Path) -> None:
    for _ in range(_MAX_UNMOUNTS):
        if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point; gone
                break
            raise Internal(f"cannot unmount network namespace {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise Internal(f"cannot remove network namespace pin {path}: {err}") from None


async def create_netns(directory: Path, name: str) -> Path:
    """Create a network namespace pinned at `directory/name` (its `lo` up) and return it.

    Raises `AlreadyExists` if the pin exists, `Internal` if the kernel refuses; either way
    nothing is left behind. Shielded: a cancelled caller still gets a whole netns or none.
    """
    with anyio.CancelScope(shield=True):
        path = await anyio.to_thread.run_sync(_create, directory, name)
    log.debug("netns created", netns=str(path))
    return path


async def create_userns_netns(
    directory: Path, name: str, user: Path, uid_map: str, gid_map: str
) -> Path:
    """As create_netns, for a pod with its own user namespace (pinned at `user`, with these
    `/proc/<pid>/uid_map` and `gid_map` lines), which owns the netns."""
    with anyio.CancelScope(shield=True):
        path = await anyio.to_thread.run_sync(
            _create_userns_netns, directory, name, user, uid_map, gid_map
        )
    log.debug("user and network namespaces created", netns=str(path), userns=str(user))
    return path


async def remove_pin(path: Path) -> None:
    """Unmount and delete a namespace pin of any kind; a missing one is fine."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_remove, path)


def unpin_netns(path: Path) -> None:
    """As remove_netns, blocking: for a worker thread that has more to remove."""
    _remove(path)
    log.debug("netns removed", netns=str(path))


async def remove_netns(path: Path) -> None:
    """Unmount (lazily) and delete a netns pin; a missing or unmounted pin is fine."""
    await remove_pin(path)
    log.debug("netns removed", netns=str(path))


def dial_in_netns(netns: Path | None, port: int, timeout: float) -> socket.socket:
    """A TCP connection to `port` on loopback (127.0.0.1, then ::1) inside `netns` (None:
    the host's), made by a dedicated thread that entered the netns: a socket belongs to
    the netns it was created in, and setns is per thread. Blocking; OSError when nothing
    listens."""
    made: list[socket.socket] = []
    errors: list[OSError] = []

    def connect() -> None:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except OSError as err:
                sock.close()
                errors.append(err)
                continue
            sock.setblocking(False)
            made.append(sock)
            return

    if netns is None:
        connect()
    else:
        _in_pinned_netns(netns, f"criproxy-dial-{netns.name[:12]}", connect)
    if made:
        return made[0]
    raise errors[-1] if errors else OSError(f"cannot connect to port {port}")
