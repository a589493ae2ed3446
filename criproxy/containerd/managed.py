"""Managed mode: the containerd that criproxy starts, supervises, adopts and stops.

The child runs in its own session with its output in a log file, so that criproxy dying
(even by SIGKILL) leaves it and its shims running; the next criproxy finds it through the
pid file and adopts it instead of starting a second containerd on the same root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.errors import Unavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = structlog.get_logger("criproxy.containerd.managed")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class ManagedPaths:
    """Where the managed containerd keeps everything; all under criproxy's own dirs."""

    root: Path
    state: Path
    socket: Path
    config: Path
    pidfile: Path
    log: Path

    @classmethod
    def under(cls, criproxy_root: Path, criproxy_state: Path) -> ManagedPaths:
        state = criproxy_state / "containerd"
        return cls(
            root=criproxy_root / "containerd",
            state=state,
            socket=state / "containerd.sock",
            config=state / "config.toml",
            pidfile=state / "containerd.pid",
            log=criproxy_root / "containerd.log",
        )


def render_config(paths: ManagedPaths) -> str:
    """containerd's config: its own root, state and socket, and its built-in CRI disabled."""
    return "\n".join(
        [
            "# Written by criproxy for the containerd it manages; rewritten at every start.",
            "version = 2",
            f'root = "{paths.root}"',
            f'state = "{paths.state}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "",
            "[grpc]",
            f'  address = "{paths.socket}"',
            "",
            "[ttrpc]",
            f'  address = "{paths.socket}.ttrpc"',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{paths.root / "opt"}"',
            "",
        ]
    )


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_ours(pid: int, paths: ManagedPaths) -> bool:
    """A live process that is a containerd started on this very config file."""
    argv = _cmdline(pid)
    return bool(argv) and "containerd" in Path(argv[0]).name and str(paths.config) in argv


def _find_existing(paths: ManagedPaths) -> int | None:
    """The pid of a containerd already running on our config: the pid file first, then /proc."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(paths.pidfile.read_text().strip())
        if _is_ours(pid, paths):
            return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_ours(int(entry.name), paths):
            return int(entry.name)
    return None


class ManagedContainerd:
    """Start or adopt containerd, restart it when it dies, stop it on a clean exit."""

    def __init__(
        self,
        paths: ManagedPaths,
        binary: str,
        ping: Callable[[], Awaitable[bool]],
    ) -> None:
        self.paths = paths
        self.binary = binary
        self._ping = ping
        self._pid: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._pid

    async def start_or_adopt(self) -> None:
        """Adopt a containerd already running on our root, else start one; wait until it answers."""
        existing = await anyio.to_thread.run_sync(_find_existing, self.paths)
        if existing is not None:
            self._pid, self._child = existing, None
            self._write_pidfile(existing)
            log.info("adopting running containerd", pid=existing, socket=str(self.paths.socket))
        else:
            await anyio.to_thread.run_sync(self._spawn)
        await self._wait_ready()

    def _write_pidfile(self, pid: int) -> None:
        tmp = self.paths.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.paths.pidfile)

    def _spawn(self) -> None:
        for directory in (self.paths.root, self.paths.state, self.paths.log.parent):
            directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.paths.config.write_text(render_config(self.paths))
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()
        with self.paths.log.open("ab") as logfile:
            self._child = subprocess.Popen(  # raises OSError when the binary is missing
                [self.binary, "--config", str(self.paths.config)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._pid = self._child.pid
        self._write_pidfile(self._child.pid)
        log.info("started managed containerd", pid=self._pid, log=str(self.paths.log))

    def _alive(self) -> bool:
        if self._pid is None:
            return False
        if self._child is not None:
            return self._child.poll() is None
        return _is_ours(self._pid, self.paths)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._alive():
                raise Unavailable(
                    f"managed containerd exited during start-up; see {self.paths.log}"
                )
            if await self._ping():
                return
            await anyio.sleep(0.1)
        raise Unavailable(
            f"managed containerd did not answer on {self.paths.socket} within "
            f"{START_TIMEOUT:.0f}s; see {self.paths.log}"
        )

    async def _wait_exit(self) -> None:
        """Return when the current containerd process is gone (and reaped, if it is our child)."""
        assert self._pid is not None
        try:
            pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        if self._child is not None:
            await anyio.to_thread.run_sync(self._child.wait)

    async def supervise(self) -> None:
        """Runs until cancelled: whenever containerd dies, start a new one (with backoff)."""
        failures = 0
        while True:
            await self._wait_exit()
            if self._stopping:
                return
            code = self._child.returncode if self._child is not None else None
            delay = _RESTART_BACKOFF[min(failures, len(_RESTART_BACKOFF) - 1)]
            log.warning("managed containerd exited; restarting", exit_code=code, delay=delay)
            await anyio.sleep(delay)
            try:
                await anyio.to_thread.run_sync(self._spawn)
                await self._wait_ready()
            except Exception as err:  # keep supervising: the next loop waits for this child
                failures += 1
                log.error("managed containerd restart failed", error=str(err))
                continue
            failures = 0
            self.restarts += 1

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT. Shims survive, so pods keep running."""
        self._stopping = True
        pid = self._pid
        if pid is None or not self._alive():
            return
        log.info("stopping managed containerd", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT) as scope:
            await self._wait_exit()
        if scope.cancelled_caught:
            log.warning("managed containerd ignored SIGTERM; killing", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self._wait_exit()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pidfile.unlink()
        self._pid = None
