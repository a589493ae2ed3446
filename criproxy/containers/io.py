"""Container IO: the FIFOs a containerd shim talks through, and the CRI log writer.

The runc shim opens a container's stdout/stderr FIFOs for writing (and keeps a read end of
its own, so a writer never gets EPIPE while criproxy is away) and its stdin FIFO for
reading. criproxy holds the other ends: it must open them before `tasks.Create` (the shim's
open waits for a reader) and it must never block the event loop on them, so every FIFO is
opened non-blocking and waited on through the loop's selector.

Output goes to the kubelet's log format, byte for byte what containerd's CRI plugin writes
(`pkg/cri/io/logger.go`): `<RFC3339Nano local time> <stdout|stderr> <F|P> <content>\\n`,
where a line longer than the configured size is cut into `P` (partial) records of exactly
that size before the last piece, and a last line without a newline is written as `P` at EOF.

Linux FIFO semantics this relies on (tests/unit/containers/test_io.py proves them): a read
end opened with O_NONBLOCK while no writer is there reads b"" at once, but poll/epoll does
not report it readable (no POLLHUP) until a writer has come; so "readable, then read()
returns b''" means every writer has left. Reopening our read end on the same path (after a
criproxy restart) picks up where the old one stopped: the pipe and its buffered bytes live
as long as the shim holds its ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread
import structlog

from criproxy.errors import AlreadyExists, Internal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

__all__ = [
    "DEFAULT_MAX_LINE_SIZE",
    "EXEC_SYNC_LIMIT",
    "CappedBuffer",
    "ContainerIO",
    "ContainerLog",
    "ExecIO",
    "FifoReader",
    "FifoSet",
    "FifoWriter",
    "Stream",
    "collect",
    "create_fifos",
    "pump_to_log",
    "rfc3339_nano",
]

log = structlog.get_logger("criproxy.containers.io")

Stream = Literal["stdout", "stderr"]

DEFAULT_MAX_LINE_SIZE = 16 * 1024
"""containerd's `max_container_log_line_size`; a value <= 0 means no limit."""
EXEC_SYNC_LIMIT = 16 * 1024 * 1024
"""containerd keeps at most this much of each ExecSync stream and drops the rest silently."""

_READ_SIZE = 64 * 1024  # a default pipe's capacity: one read empties it
_FIFO_MODE = 0o700
_LOG_MODE = 0o640
_LOG_DIR_MODE = 0o755


# --- FIFOs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FifoSet:
    """The FIFO paths handed to `tasks.Create` / `tasks.Exec`; "" where a stream is absent."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def in_dir(
        cls, directory: Path, process_id: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> FifoSet:
        """The paths `create_fifos` uses, without creating anything (recovery reopens them)."""

        def path(name: str, wanted: bool) -> str:
            return str(directory / f"{process_id}-{name}") if wanted else ""

        return cls(path("stdin", stdin), path("stdout", stdout), path("stderr", stderr))

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.stdin, self.stdout, self.stderr) if p)

    def remove(self) -> None:
        """Unlink the FIFOs (a missing one is fine); open ends keep working until closed.

        Blocking, but a few unlinks on the state tmpfs; the directory is the caller's.
        """
        for path in self.paths():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise Internal(f"cannot remove FIFO {path}: {err}") from None


def create_fifos(
    directory: Path, process_id: str, *, stdin: bool, stdout: bool, stderr: bool
) -> FifoSet:
    """mkfifo `<id>-stdin`, `<id>-stdout`, `<id>-stderr` (those asked for, mode 0700).

    Blocking, but only metadata calls on the state tmpfs. Raises `AlreadyExists` if one of
    them exists (ids are unique, so that is a leftover to remove first) and `Internal` for
    other failures; either way nothing it made is left behind.
    """
    fifos = FifoSet.in_dir(directory, process_id, stdin=stdin, stdout=stdout, stderr=stderr)
    made: list[str] = []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in fifos.paths():
            try:
                os.mkfifo(path, _FIFO_MODE)
            except FileExistsError:
                raise AlreadyExists(f"FIFO {path} exists already") from None
            made.append(path)
            os.chmod(path, _FIFO_MODE)  # whatever the umask
    except BaseException as err:
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if isinstance(err, OSError):
            message = f"cannot create the FIFOs of {process_id} in {directory}: {err}"
            raise Internal(message) from None
        raise
    return fifos


class _FifoEnd:
    """A non-blocking FIFO fd that one task at a time uses; `close` is safe from anywhere.

    Closed while in use, the fd stays open until the user lets go (a closed fd still
    registered with the loop's selector could be reused under it); a pending wait for
    readiness is woken and the user gets ClosedResourceError.
    """

    def __init__(self, fd: int, path: str) -> None:
        self.path = path
        self._fd = fd
        self._busy = False
        self._closing = False
        self._wait: anyio.CancelScope | None = None

    @property
    def closed(self) -> bool:
        return self._fd < 0 or self._closing

    def close(self) -> None:
        if self._busy:
            self._closing = True
            if self._wait is not None:
                self._wait.cancel()
        elif self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        if self.closed:
            raise anyio.ClosedResourceError
        self._busy = True
        try:
            yield
        finally:
            self._busy, self._wait = False, None
            if self._closing:
                self.close()

    async def _wait_for(self, ready: Callable[[int], Awaitable[None]]) -> None:
        with anyio.CancelScope() as self._wait:
            await ready(self._fd)
        self._wait = None
        if self._closing:
            raise anyio.ClosedResourceError


class FifoReader(_FifoEnd):
    """Our read end of a FIFO that a shim writes to; one reading task at a time.

    `read` waits for readiness before it trusts a b"" from the kernel (see the module
    docstring), so a reader opened before any writer simply waits, and EOF means the
    writers that came have all gone.
    """

    def __init__(self, fd: int, path: str) -> None:
        super().__init__(fd, path)
        self._writer_seen = False

    @classmethod
    def open(cls, path: str) -> FifoReader:
        """Open without waiting for a writer (O_NONBLOCK on a FIFO's read end never blocks)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise Internal(f"cannot open FIFO {path} for reading: {err}") from None
        return cls(fd, path)

    async def read(self, max_bytes: int = _READ_SIZE) -> bytes:
        """The next bytes (at most `max_bytes`), or b"" once every writer has gone.

        Cancellation-safe: a cancelled read consumed nothing. Raises ClosedResourceError
        when the reader is (or gets) closed.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        with self._use():
            while True:
                if self._writer_seen:
                    try:
                        data = os.read(self._fd, max_bytes)
                    except BlockingIOError:
                        pass
                    else:
                        # A flooding writer never makes us wait: yield to the loop anyway,
                        # without a cancel point, since the bytes are ours now.
                        await anyio.lowlevel.cancel_shielded_checkpoint()
                        return data
                await self._wait_for(anyio.wait_readable)
                self._writer_seen = True


class FifoWriter(_FifoEnd):
    """Our write end of a stdin FIFO the shim reads from; one writing task at a time.

    Opened O_RDWR: that never blocks and never fails for want of a reader (an O_WRONLY
    open would, until the shim opened its end), and no write fails with EPIPE. Closing it
    is the shim's EOF (stdin_once), as ours is the only write end.
    """

    @classmethod
    def open(cls, path: str) -> FifoWriter:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise Internal(f"cannot open FIFO {path} for writing: {err}") from None
        return cls(fd, path)

    async def write(self, data: bytes) -> None:
        """Write all of `data`, waiting while the pipe is full.

        A cancelled write may have written a prefix of `data`. Raises ClosedResourceError
        when the writer is (or gets) closed.
        """
        with self._use():
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await self._wait_for(anyio.wait_writable)
                else:
                    view = view[written:]
                    await anyio.lowlevel.checkpoint()
                    if self._closing:
                        raise anyio.ClosedResourceError


# --- The CRI log format ------------------------------------------------------------------


def _zone(offset: int) -> str:
    """Go's `Z07:00`: Z for a zero offset, else ±hh:mm (seconds of odd offsets dropped)."""
    if offset == 0:
        return "Z"
    minutes = abs(offset) // 60
    return f"{'-' if offset < 0 else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


def _fraction(nanos: int) -> str:
    """Go's `.999999999`: trailing zeros trimmed, nothing at all for a whole second."""
    return "." + f"{nanos:09d}".rstrip("0") if nanos else ""


def rfc3339_nano(ns: int) -> str:
    """Go's `time.RFC3339Nano` of `ns` (nanoseconds since the epoch) in the local zone."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    tm = time.localtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + _fraction(nanos) + _zone(tm.tm_gmtoff)


class _Clock:
    """`rfc3339_nano(now)` with the local-time conversion cached for the current second."""

    __slots__ = ("_second", "_seconds_part", "_zone")

    def __init__(self) -> None:
        self._second = -1
        self._seconds_part = ""
        self._zone = ""

    def now(self) -> bytes:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            tm = time.localtime(seconds)
            self._seconds_part = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            self._zone = _zone(tm.tm_gmtoff)
            self._second = seconds
        return (self._seconds_part + _fraction(nanos) + self._zone).encode()


class _Lines:
    """Cuts one stream's bytes into CRI log records, carrying an unfinished line across reads.

    The same records as containerd's `redirectLogs`: "\\n" and a "\\r" right before it are
    stripped; a line's content is cut into `max_line_size` pieces, all but the last tagged P;
    a line still unfinished at EOF is written as P.
    """

    __slots__ = ("_full", "_max", "_partial", "_pending")

    def __init__(self, stream: Stream, max_line_size: int) -> None:
        self._full = f" {stream} F ".encode()
        self._partial = f" {stream} P ".encode()
        self._max = max(max_line_size, 0)
        self._pending = bytearray()

    def feed(self, data: bytes, stamp: bytes, out: list[bytes]) -> None:
        full, partial = stamp + self._full, stamp + self._partial
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: the start of a line yet to finish
        if lines and self._pending:
            self._pending += lines[0]
            lines[0] = bytes(self._pending)
            self._pending.clear()
        limit = self._max
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if limit and len(line) > limit:
                last = (len(line) - 1) // limit * limit
                out.extend(partial + line[i : i + limit] + b"\n" for i in range(0, last, limit))
                line = line[last:]
            out.append(full + line + b"\n")
        self._pending += tail
        if limit:
            # Cut as soon as the content is known to be longer than the limit; a trailing
            # "\r" may yet turn out to be half of a "\r\n", so it does not count.
            while len(self._pending) - self._pending.endswith(b"\r") > limit:
                out.append(partial + self._pending[:limit] + b"\n")
                del self._pending[:limit]

    def flush(self, stamp: bytes, out: list[bytes]) -> None:
        """The unfinished line, as P records (EOF, or a reader going away)."""
        if not self._pending:
            return
        partial = stamp + self._partial
        limit = self._max or len(self._pending)
        out.extend(
            partial + self._pending[i : i + limit] + b"\n"
            for i in range(0, len(self._pending), limit)
        )
        self._pending.clear()


def _open_log(path: Path) -> int:
    """Create the log's directory and open it for appending, as containerd does (blocking)."""
    path.parent.mkdir(mode=_LOG_DIR_MODE, parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, _LOG_MODE)


class ContainerLog:
    """One container's CRI log file, written by both of its streams.

    File writes run in worker threads (a write to a local disk can stall on writeback, and
    the loop must not), one thread hop per FIFO read: the hop formats that read's lines and
    appends them all with one write(). A lock serialises the hops, so batches of whole lines
    never interleave, and `reopen` never swaps the file under a write: each batch lands
    whole in the old file or the new one. Writes of bytes already taken from a FIFO are
    shielded from cancellation, so nothing read is lost.
    """

    def __init__(self, path: Path, fd: int, *, max_line_size: int, container_id: str) -> None:
        self.path = path
        self.max_line_size = max_line_size
        self._fd = fd
        self._lock = anyio.Lock()
        self._busy = False  # a worker thread uses _fd: close() leaves it to that hop's end
        self._closing = False
        self._clock = _Clock()
        self._lines: dict[str, _Lines] = {}
        self._failing = False
        self._log = log.bind(container=container_id, log_path=str(path))

    @classmethod
    async def open(
        cls, path: Path, *, max_line_size: int = DEFAULT_MAX_LINE_SIZE, container_id: str = ""
    ) -> ContainerLog:
        """Open (creating it and its directory) the log at `path` for appending."""
        try:
            fd = await anyio.to_thread.run_sync(_open_log, path)
        except OSError as err:
            raise Internal(f"cannot open container log {path}: {err}") from None
        return cls(path, fd, max_line_size=max_line_size, container_id=container_id)

    @property
    def closed(self) -> bool:
        return self._fd < 0 or self._closing

    async def write(self, stream: Stream, data: bytes) -> None:
        """Append the lines `data` completes; its unfinished last line waits for more."""
        await self._hop(self._append, stream, data, False)

    async def finish(self, stream: Stream) -> None:
        """Write the stream's unfinished line as P (at EOF, or when its reader goes away)."""
        await self._hop(self._append, stream, b"", True)

    async def reopen(self) -> None:
        """Open a new file at the same path (after the kubelet renamed the old one).

        On failure the old file stays in use and `Internal` is raised.
        """
        try:
            await self._hop(self._swap)
        except OSError as err:
            raise Internal(f"cannot reopen container log {self.path}: {err}") from None
        if self.closed:
            raise Internal(f"container log {self.path} is closed")
        self._log.info("container log reopened")

    def close(self) -> None:
        """Close the file (once the write in flight, if any, is done); later output is dropped."""
        self._closing = True
        if not self._busy:
            self._close_fd()

    async def _hop(self, work: Callable[..., None], *args: object) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self.closed:
                    return
                self._busy = True
                try:
                    await anyio.to_thread.run_sync(work, *args)
                finally:
                    self._busy = False
                    if self._closing:
                        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _swap(self) -> None:
        """Open the new file, then close the old one (in a worker thread, under the lock)."""
        fd = _open_log(self.path)
        old, self._fd = self._fd, fd
        os.close(old)
        self._failing = False

    def _append(self, stream: Stream, data: bytes, final: bool) -> None:
        """Format and write one batch (in a worker thread, under the lock)."""
        lines = self._lines.get(stream)
        if lines is None:
            lines = self._lines[stream] = _Lines(stream, self.max_line_size)
        out: list[bytes] = []
        stamp = self._clock.now()
        lines.feed(data, stamp, out)
        if final:
            lines.flush(stamp, out)
        if not out:
            return
        view = memoryview(b"".join(out))
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            # Like containerd: report, drop the batch, keep draining the container.
            if not self._failing:
                self._log.error("container log write failed", error=str(err))
            self._failing = True
            return
        if self._failing:
            self._log.info("container log writes work again")
            self._failing = False


# --- Pumps -------------------------------------------------------------------------------


async def pump_to_log(
    reader: FifoReader,
    stream: Stream,
    container_log: ContainerLog | None,
    attachers: Callable[[], Iterable[Attacher]] = tuple,
) -> None:
    """Copy one stream into the log (none: dropped) and to the attached clients until EOF
    (or until the reader is closed).

    Whatever was read is written even if the pump is cancelled, and the unfinished last
    line is written as P (a later reader's continuation then joins it, as the kubelet
    joins P records). A client that does not read holds the output back (as with
    containerd); the log still gets everything.
    """
    try:
        while data := await reader.read():
            if container_log is not None:
                await container_log.write(stream, data)
            for attacher in attachers():
                await attacher.deliver(stream, data)
    except anyio.ClosedResourceError:
        pass
    finally:
        if container_log is not None:
            await container_log.finish(stream)


class CappedBuffer:
    """Keeps the first `limit` bytes written and drops the rest, as containerd's ExecSync."""

    def __init__(self, limit: int = EXEC_SYNC_LIMIT) -> None:
        self.limit = limit
        self.truncated = False
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        room = self.limit - len(self._data)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self._data += data

    def getvalue(self) -> bytes:
        return bytes(self._data)

    def __len__(self) -> int:
        return len(self._data)


async def collect(reader: FifoReader, buffer: CappedBuffer) -> None:
    """Read until EOF into `buffer`; past its limit the output is still drained."""
    with contextlib.suppress(anyio.ClosedResourceError):
        while data := await reader.read():
            buffer.write(data)


# --- A process's IO ----------------------------------------------------------------------


class _ProcessOutput:
    """The read ends of a process's output FIFOs and the `run` that drains them.

    `close` is synchronous and safe at any time: it stops `run` (which still writes what
    it read) and closes every end, now or as soon as `run` lets go of it.
    """

    _id_key = "container"

    def __init__(
        self, process_id: str, fifos: FifoSet, stdout: FifoReader | None, stderr: FifoReader | None
    ) -> None:
        self.fifos = fifos
        self._process_id = process_id
        streams: list[tuple[Stream, FifoReader | None]] = [("stdout", stdout), ("stderr", stderr)]
        self._readers = [(stream, reader) for stream, reader in streams if reader is not None]
        self._log = log.bind(**{self._id_key: process_id})
        self._scope: anyio.CancelScope | None = None
        self._running = False
        self._closing = False
        self._drained = anyio.Event()

    async def run(self) -> None:
        """Drain every output stream until all reach EOF; runs once, owned by a task group.

        Cancelled (or stopped by `close`), it still writes what it read, then closes the
        readers.
        """
        if self._scope is not None:
            raise RuntimeError(f"the IO of {self._process_id} runs already")
        self._scope = anyio.CancelScope()
        if self._closing:
            return
        self._running = True
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for stream, reader in self._readers:
                        tg.start_soon(
                            self._pump, stream, reader, name=f"{self._process_id} {stream}"
                        )
                self._drained.set()
                self._log.debug("process output drained")
        finally:
            self._running = False
            self._close_readers()
            if self._closing:
                self._release()

    async def _pump(self, stream: Stream, reader: FifoReader) -> None:
        raise NotImplementedError

    @property
    def drained(self) -> bool:
        """True once every output stream reached EOF and its output was taken."""
        return self._drained.is_set()

    async def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until `drained` (False if `timeout` seconds pass first).

        A process that leaked the container's stdout can hold EOF off forever, hence the
        timeout; `close` then stops `run`, which still writes what it has read.
        """
        with anyio.move_on_after(timeout):
            await self._drained.wait()
        return self._drained.is_set()

    def close(self) -> None:
        self._closing = True
        if self._running:
            assert self._scope is not None
            self._scope.cancel()  # run's finally releases the rest once its pumps are done
        else:
            self._close_readers()
            self._release()

    def _close_readers(self) -> None:
        for _, reader in self._readers:
            reader.close()

    def _release(self) -> None:
        """What `close` frees besides the readers."""


class Attacher:
    """One attached client's share of a container's output: a small bounded queue per
    stream, so a client that stops reading holds the output back instead of growing it."""

    QUEUE = 16

    def __init__(self, *, stdout: bool, stderr: bool) -> None:
        self._send, self.output = anyio.create_memory_object_stream[tuple[Stream, bytes]](
            self.QUEUE
        )
        self._wanted = {"stdout"} if stdout else set()
        self._wanted |= {"stderr"} if stderr else set()

    async def deliver(self, stream: Stream, data: bytes) -> None:
        if stream not in self._wanted:
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send.send((stream, data))

    def end(self) -> None:
        """No more output: the client's reader ends once it has taken what is queued."""
        self._send.close()


class ContainerIO(_ProcessOutput):
    """A CRI container's IO: the read ends of its output FIFOs, its stdin, and its log.

    Made before `tasks.Create` (the shim's opens wait for ours); `run` in a task group that
    outlives the task; `close` when the container exits. With a tty there is no stderr
    FIFO and the terminal's output is logged as stdout. The FIFOs stay until the container's
    IO directory is removed.
    """

    def __init__(
        self,
        container_id: str,
        fifos: FifoSet,
        *,
        stdout: FifoReader | None,
        stderr: FifoReader | None,
        stdin: FifoWriter | None,
        container_log: ContainerLog | None,
        stdin_once: bool = False,
    ) -> None:
        super().__init__(container_id, fifos, stdout, stderr)
        self.container_id = container_id
        self.stdin = stdin
        """Written by attach; closing it is the container's stdin EOF."""
        self.stdin_once = stdin_once
        """Attach closes `stdin` when its first session's input ends."""
        self.container_log = container_log
        """None when the container has no log path: its output is drained and dropped."""
        self._attachers: set[Attacher] = set()

    @classmethod
    async def create(
        cls,
        directory: Path,
        container_id: str,
        *,
        log_path: str,
        stdin: bool,
        tty: bool,
        stdin_once: bool = False,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> ContainerIO:
        """Make the container's FIFOs in `directory` and open our ends and the log.

        A container being started has no task yet, so FIFOs left in `directory` by an
        attempt that never got one are replaced. `log_path` "" means no log.
        """
        fifos = FifoSet.in_dir(directory, container_id, stdin=stdin, stdout=True, stderr=not tty)

        def make() -> int | None:
            """The FIFOs and the log file in one worker-thread hop; the log's fd."""
            fifos.remove()
            create_fifos(directory, container_id, stdin=stdin, stdout=True, stderr=not tty)
            if not log_path:
                return None
            try:
                return _open_log(Path(log_path))
            except OSError as err:
                fifos.remove()
                raise Internal(f"cannot open container log {log_path}: {err}") from None

        log_fd = await anyio.to_thread.run_sync(make)
        try:
            return await cls._open(
                container_id,
                fifos,
                log_path,
                stdin_once,
                max_line_size,
                log_fd=log_fd,
            )
        except BaseException:
            if log_fd is not None:
                os.close(log_fd)
            with anyio.CancelScope(shield=True), contextlib.suppress(Internal):
                await anyio.to_thread.run_sync(fifos.remove)
            raise

    @classmethod
    async def attach(
        cls,
        directory: Path,
        container_id: str,
        *,
        log_path: str,
        stdin: bool,
        tty: bool,
        stdin_once: bool = False,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> ContainerIO:
        """Reopen our ends of a running container's FIFOs (after a criproxy restart).

        The shim still holds its ends, so output resumes where the last reader stopped
        (what was buffered in the pipe meanwhile included). Only for a task that is still
        running: with the shim gone, no EOF would ever come. `Internal` if the FIFOs are gone.
        """
        fifos = FifoSet.in_dir(directory, container_id, stdin=stdin, stdout=True, stderr=not tty)
        return await cls._open(container_id, fifos, log_path, stdin_once, max_line_size)

    @classmethod
    async def _open(
        cls,
        container_id: str,
        fifos: FifoSet,
        log_path: str,
        stdin_once: bool,
        max_line_size: int,
        *,
        log_fd: int | None = None,
    ) -> ContainerIO:
        """Our ends of the FIFOs, and the log (opened here unless its fd is given)."""
        ends: list[FifoReader | FifoWriter] = []
        try:
            stdout = FifoReader.open(fifos.stdout)
            ends.append(stdout)
            stderr = FifoReader.open(fifos.stderr) if fifos.stderr else None
            ends += [stderr] if stderr else []
            stdin = FifoWriter.open(fifos.stdin) if fifos.stdin else None
            ends += [stdin] if stdin else []
            container_log = None
            if log_fd is not None:
                container_log = ContainerLog(
                    Path(log_path), log_fd, max_line_size=max_line_size, container_id=container_id
                )
            elif log_path:
                container_log = await ContainerLog.open(
                    Path(log_path), max_line_size=max_line_size, container_id=container_id
                )
        except BaseException:
            for end in ends:
                end.close()
            raise
        return cls(
            container_id,
            fifos,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            container_log=container_log,
            stdin_once=stdin_once,
        )

    async def _pump(self, stream: Stream, reader: FifoReader) -> None:
        await pump_to_log(reader, stream, self.container_log, lambda: tuple(self._attachers))

    def add_attacher(self, *, stdout: bool, stderr: bool) -> Attacher:
        """A client's view of the container's output from now on, until it detaches or
        the output ends."""
        attacher = Attacher(stdout=stdout, stderr=stderr)
        if self.drained or self._closing:
            attacher.end()
        else:
            self._attachers.add(attacher)
        return attacher

    def remove_attacher(self, attacher: Attacher) -> None:
        self._attachers.discard(attacher)
        attacher.end()

    async def reopen(self) -> None:
        """ReopenContainerLog: a new file at the log path; nothing to do without a log."""
        if self.container_log is not None:
            await self.container_log.reopen()

    def close(self) -> None:
        """Stop `run` and close stdin, the readers and the log (after `run`'s last write)."""
        if self.stdin is not None:
            self.stdin.close()
        super().close()

    def _release(self) -> None:
        for attacher in self._attachers:
            attacher.end()
        self._attachers.clear()
        if self.container_log is not None:
            self.container_log.close()


class ExecIO(_ProcessOutput):
    """The output of one ExecSync: FIFOs of its own, collected in memory up to a limit each.

    `close` also removes the exec's FIFOs (a few unlinks on the state tmpfs).
    """

    _id_key = "exec_id"

    def __init__(
        self,
        exec_id: str,
        fifos: FifoSet,
        stdout: FifoReader,
        stderr: FifoReader,
        limit: int,
    ) -> None:
        super().__init__(exec_id, fifos, stdout, stderr)
        self._buffers = {"stdout": CappedBuffer(limit), "stderr": CappedBuffer(limit)}

    @classmethod
    async def create(cls, directory: Path, exec_id: str, *, limit: int = EXEC_SYNC_LIMIT) -> ExecIO:
        """Make `<exec id>-stdout` and `-stderr` in `directory` and open our ends."""
        # metadata calls on the state dir: quicker than a trip to a worker thread
        fifos = create_fifos(directory, exec_id, stdin=False, stdout=True, stderr=True)
        try:
            stdout = FifoReader.open(fifos.stdout)
            try:
                stderr = FifoReader.open(fifos.stderr)
            except BaseException:
                stdout.close()
                raise
        except BaseException:
            fifos.remove()
            raise
        return cls(exec_id, fifos, stdout, stderr, limit)

    async def _pump(self, stream: Stream, reader: FifoReader) -> None:
        await collect(reader, self._buffers[stream])

    @property
    def stdout(self) -> bytes:
        return self._buffers["stdout"].getvalue()

    @property
    def stderr(self) -> bytes:
        return self._buffers["stderr"].getvalue()

    @property
    def truncated(self) -> bool:
        """Whether either stream was longer than the limit (and cut, as containerd does)."""
        return any(buffer.truncated for buffer in self._buffers.values())

    def _release(self) -> None:
        try:
            self.fifos.remove()  # the exec's own FIFOs: `close` removes them
        except Internal as err:
            self._log.warning("exec FIFOs not removed", error=err.message)
