"""The plugin process: exec one CNI plugin with its config on stdin, collect its outputs and
exit status off the event loop, and reap it a moment later on a thread its owner runs."""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import anyio
import structlog

if TYPE_CHECKING:
    from collections.abc import Mapping

log = structlog.get_logger("criproxy.network")

_PLUGIN_THREADS = 64
_REAP_DELAY = 0.05


class PluginRunner:
    """Runs a `Cni`'s plugins, each on a worker thread, and owns the thread that reaps them.

    `run()` is that thread's owner. Without it (a `Cni` used on its own, in tests or tools, or
    a plugin that ends after shutdown) each plugin is reaped as soon as its exit status was
    read, on the thread that ran it: never a zombie nor a thread left behind, at the price of
    the reaping cost the delay avoids (see `_PluginProcess`), which only a busy node feels.
    """

    def __init__(self, reap_delay: float = _REAP_DELAY) -> None:
        self._reaper = _Reaper(reap_delay)
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self) -> None:
        """Reap plugins on the reaper thread until cancelled; then the thread kills and reaps
        what it still holds, and is joined."""
        self._reaper.start()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._reaper.stop)

    async def exec(
        self, path: str, stdin: bytes, env: Mapping[str, str]
    ) -> tuple[int, bytes, bytes]:
        """Exec a plugin, feed it its config, collect its output; killed if cancelled.

        Plugin runs have worker threads of their own, apart from the default pool (file IO),
        which a slow or hung plugin must not starve.
        """
        run = _PluginProcess(path, stdin, env, self._reaper)
        try:
            return await anyio.to_thread.run_sync(
                run.run, abandon_on_cancel=True, limiter=self._threads()
            )
        except BaseException:
            run.kill()  # the abandoned thread sees it die and hands it to the reaper
            raise

    def _threads(self) -> anyio.CapacityLimiter:
        """Made on first use, inside the event loop that runs the plugins."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(_PLUGIN_THREADS)
        return self._limiter


class _PluginProcess:
    """One plugin run on a worker thread: spawn, collect both outputs, read the exit status.

    A blocking run on a thread costs the event loop far less than asyncio's pipe
    transports and child watcher (three pipes, their callbacks, a pidfd reader per run),
    and the spawn (vfork + exec, which waits for the child's exec) stays off the loop.

    The config goes in as a memfd, so a plugin that exits without reading it, or leaves a
    child holding its stdin, never blocks the write; stdout and stderr are pipes, as
    libcni's (a plugin may reopen /dev/stderr), read until the plugin has exited and then
    for `_OUTPUT_GRACE` at most (a child it left running may hold them open for good).
    The exit status is read without reaping (`WNOWAIT`, through a pidfd, so never of a
    reused pid) and its `_Reaper` reaps the zombie a moment later: a multi-threaded (Go) plugin
    reaped the instant it exits races its last threads' teardown, and the kernel's /proc
    dcache flush then spins in the reaper (perf: up to 1 ms of CPU per plugin run, a fifth
    of criproxy's CPU with ten pods at once).
    """

    def __init__(self, path: str, stdin: bytes, env: Mapping[str, str], reaper: _Reaper) -> None:
        self._args = ([path], stdin, env)
        self._reaper = reaper
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(self) -> tuple[int, bytes, bytes]:
        argv, stdin, env = self._args
        config = _memfd("cni-config", stdin)
        try:
            with self._lock:
                if self._cancelled:
                    return -signal.SIGKILL, b"", b""
                process = self._process = subprocess.Popen(
                    argv,
                    stdin=config,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
                pidfd = os.pidfd_open(process.pid)  # nothing reaps it before this lock goes
        finally:
            os.close(config)
        try:
            out, err = _drain(process, pidfd)
            code = _exit_status(process, pidfd)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # the reaper must not wait on a running plugin
            raise
        finally:
            os.close(pidfd)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            self._reaper.reap_soon(process)
        return code, out, err

    def kill(self) -> None:
        """Kill the plugin, or keep it from starting."""
        with self._lock:
            self._cancelled = True
            if self._process is not None and self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()


_OUTPUT_CAP = 16 * 1024 * 1024
"""What is kept of each of a plugin's outputs; the rest is read and dropped."""
_OUTPUT_GRACE = 1.0
"""How long a plugin's outputs are still read after it exited, while something holds them."""


def _memfd(name: str, data: bytes) -> int:
    """A memfd holding `data`, at offset 0."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _drain(process: subprocess.Popen[bytes], pidfd: int) -> tuple[bytes, bytes]:
    """Both outputs, read until closed, or until `_OUTPUT_GRACE` after the plugin's exit
    (`pidfd` readable); each kept up to `_OUTPUT_CAP`."""
    assert process.stdout is not None and process.stderr is not None
    kept = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    deadline: float | None = None
    with selectors.PollSelector() as selector:
        for fd in (*kept, pidfd):
            selector.register(fd, selectors.EVENT_READ)
        while len(selector.get_map()) > (0 if deadline is not None else 1):
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            for key, _ in selector.select(timeout):
                if key.fd == pidfd:
                    selector.unregister(pidfd)
                    deadline = time.monotonic() + _OUTPUT_GRACE
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = kept[key.fd]
                buffer += chunk[: max(0, _OUTPUT_CAP - len(buffer))]
    return bytes(kept[process.stdout.fileno()]), bytes(kept[process.stderr.fileno()])


def _exit_status(process: subprocess.Popen[bytes], pidfd: int) -> int:
    """As `Popen.returncode` (minus the signal that ended it), leaving the zombie."""
    try:
        status = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        # Reaped already (by the reaper after a cancel), or SIGCHLD ignored (the kernel
        # reaped it; criproxy's command resets that, and Popen then says 0).
        return process.returncode if process.returncode is not None else process.wait()
    assert status is not None  # no WNOHANG
    if status.si_code == os.CLD_EXITED:
        return status.si_status
    return -status.si_status


class _Reaper:
    """Reaps exited plugins `delay` seconds after their exit was read, on one thread.

    A zombie keeps its pid, so nothing else can be signalled by mistake meanwhile. A
    plugin still running (killed, and not dead yet) goes back in the queue: the thread
    never blocks on one. While no thread runs (not started, or stopped), a plugin handed
    over is reaped at once instead.
    """

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._queue: queue.SimpleQueue[tuple[float, subprocess.Popen[bytes]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def reap_soon(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put((time.monotonic() + self._delay, process))
                return
        _reap(process)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the CNI reaper thread runs already")
            self._stopping = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(self._stopping,), name="cni-reaper", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as err:  # no thread to be had: plugins are reaped at once
                log.warning("cannot start the CNI reaper thread", error=str(err))
                return
            self._thread = thread

    def stop(self) -> None:
        """Blocks until the thread has reaped (killing) what it held, and ended."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stopping.set()
            self._queue.put(None)  # wakes a thread waiting for work
        thread.join()

    def _run(self, stopping: threading.Event) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            due, process = item
            if stopping.wait(max(0.0, due - time.monotonic())):
                self._queue.put(item)
                break
            try:
                if process.poll() is None:
                    self._queue.put((time.monotonic() + self._delay, process))
            except Exception as err:  # the reaper must outlive any one process
                log.warning("reaping a CNI plugin failed", pid=process.pid, error=str(err))
        while True:  # stopping: nothing is queued any more but by this thread
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _reap(item[1])


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Reap a plugin now; one still running (killed, or at shutdown) is killed first."""
    with contextlib.suppress(OSError):
        process.kill()  # polls first: an exited plugin is reaped, never signalled
        process.wait()
