"""Container IO over real FIFOs and files, with subprocesses as the shim's writers.

Nothing of the kernel is mocked: the FIFO semantics the module relies on are checked here
first, then the CRI log format (against containerd's `redirectLogs` behaviour), reopen and
resume, stdin, ExecSync capture, and that a flooding container never stalls the loop.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import select
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from criproxy.containers.io import (
    CappedBuffer,
    ContainerIO,
    ContainerLog,
    ExecIO,
    FifoReader,
    FifoWriter,
    collect,
    create_fifos,
    pump_to_log,
    rfc3339_nano,
)
from criproxy.errors import AlreadyExists, Internal

pytestmark = pytest.mark.anyio

RECORD = re.compile(rb"(\S+) (stdout|stderr) ([PF]) (.*)", re.DOTALL)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?(Z|[+-]\d\d:\d\d)")

Record = tuple[str, str, bytes]  # (stream, tag, content)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Lets a test set TZ; the process's zone is restored afterwards."""
    yield monkeypatch
    monkeypatch.undo()
    time.tzset()


# --- helpers -----------------------------------------------------------------------------


def parse_log(path: Path) -> list[tuple[str, Record]]:
    """(timestamp, record) for every line; each line must be whole and well formed."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a log line was left unfinished"
    parsed = []
    for line in data.split(b"\n")[:-1]:
        match = RECORD.fullmatch(line)
        assert match, line
        ts, stream, tag, content = match.groups()
        parsed.append((ts.decode(), (stream.decode(), tag.decode(), content)))
    return parsed


def records(path: Path) -> list[Record]:
    return [record for _, record in parse_log(path)]


def joined(recs: list[Record], stream: str) -> list[bytes]:
    """A stream's lines as the kubelet rebuilds them: P records joined up to their F."""
    lines, partial = [], b""
    for s, tag, content in recs:
        if s != stream:
            continue
        partial += content
        if tag == "F":
            lines.append(partial)
            partial = b""
    assert partial == b"", "the stream ended on a partial record"
    return lines


async def write_fifo(path: str, data: bytes) -> None:
    """A writer process that opens the FIFO, writes `data` and leaves."""
    await anyio.run_process(["sh", "-c", 'cat > "$1"', "sh", path], input=data)


async def run_python(code: str, *args: str) -> None:
    await anyio.run_process([sys.executable, "-c", code, *args])


async def container_log(
    tmp_path: Path, stdout: bytes, stderr: bytes = b"", *, max_line_size: int = 16 * 1024
) -> list[Record]:
    """What a container that writes `stdout` and `stderr` gets in its CRI log."""
    log_path = tmp_path / "pods" / "c1.log"
    io = await ContainerIO.create(
        tmp_path / "io",
        "c1",
        log_path=str(log_path),
        stdin=False,
        tty=False,
        max_line_size=max_line_size,
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            await write_fifo(io.fifos.stdout, stdout)
            await write_fifo(io.fifos.stderr, stderr)
            assert await io.wait_drained()
    io.close()
    return records(log_path)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls: a file growing on disk has no event to wait on."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# --- the kernel's FIFO semantics the module relies on ------------------------------------


def test_linux_fifo_reports_hangup_only_after_a_writer_came_and_went(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    poller, epoll = select.poll(), select.epoll()
    poller.register(reader, select.POLLIN)
    epoll.register(reader, select.EPOLLIN)
    try:
        # No writer yet: read() already says EOF, but neither poll nor epoll report it.
        assert os.read(reader, 10) == b""
        assert poller.poll(0) == []
        assert epoll.poll(0) == []
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        assert poller.poll(0) == []
        with pytest.raises(BlockingIOError):  # a writer is there: no data is not EOF
            os.read(reader, 10)
        os.write(writer, b"x")
        assert poller.poll(0) == [(reader, select.POLLIN)]
        assert os.read(reader, 10) == b"x"
        os.close(writer)
        # The writer came and went: now readiness (POLLHUP) plus b"" is a real EOF.
        assert poller.poll(0) == [(reader, select.POLLHUP)]
        assert epoll.poll(0) == [(reader, select.EPOLLHUP)]
        assert os.read(reader, 10) == b""
    finally:
        epoll.close()
        os.close(reader)


def test_linux_fifo_reader_opened_while_a_writer_is_there_sees_it_leave(tmp_path: Path) -> None:
    """Recovery: a new read end on a FIFO the shim already writes to still gets the EOF."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    shim_read = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the shim holds a read end too
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"kept while nobody read\n")
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(reader, select.POLLIN)
    try:
        assert os.read(reader, 100) == b"kept while nobody read\n"
        assert poller.poll(0) == []
        os.close(writer)
        assert poller.poll(0) == [(reader, select.POLLHUP)]
        assert os.read(reader, 10) == b""
    finally:
        os.close(reader)
        os.close(shim_read)


# --- FIFOs -------------------------------------------------------------------------------


def test_fifos_are_made_0700_with_the_shims_names_and_removed(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path / "io", "abc", stdin=True, stdout=True, stderr=True)
    assert fifos.stdin == str(tmp_path / "io" / "abc-stdin")
    assert fifos.stdout == str(tmp_path / "io" / "abc-stdout")
    assert fifos.stderr == str(tmp_path / "io" / "abc-stderr")
    for path in fifos.paths():
        mode = os.stat(path).st_mode
        assert stat.S_ISFIFO(mode)
        assert stat.S_IMODE(mode) == 0o700
    fifos.remove()
    assert list((tmp_path / "io").iterdir()) == []
    fifos.remove()  # twice is fine


def test_absent_streams_have_no_fifo_and_an_empty_path(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path, "tty", stdin=False, stdout=True, stderr=False)
    assert (fifos.stdin, fifos.stderr) == ("", "")
    assert [p.name for p in tmp_path.iterdir()] == ["tty-stdout"]


def test_a_leftover_fifo_is_reported_and_nothing_new_is_left(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "abc-stdout")
    with pytest.raises(AlreadyExists, match="abc-stdout"):
        create_fifos(tmp_path, "abc", stdin=True, stdout=True, stderr=True)
    assert [p.name for p in tmp_path.iterdir()] == ["abc-stdout"]


async def test_a_reader_opened_before_its_writer_waits_and_gets_everything(
    tmp_path: Path,
) -> None:
    fifos = create_fifos(tmp_path, "c", stdin=False, stdout=True, stderr=False)
    reader = FifoReader.open(fifos.stdout)
    got = CappedBuffer()
    data = b"".join(b"line %d\n" % i for i in range(20000))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, reader, got)
            await anyio.sleep(0.1)  # the reader waits without a writer, no early EOF
            await write_fifo(fifos.stdout, data)
    reader.close()
    assert got.getvalue() == data


async def test_a_writer_that_never_connects_gives_no_eof(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path, "c", stdin=False, stdout=True, stderr=False)
    reader = FifoReader.open(fifos.stdout)
    with anyio.move_on_after(0.3) as scope:
        await reader.read()
    assert scope.cancelled_caught
    # A writer that comes and goes without a byte: now it is EOF.
    await write_fifo(fifos.stdout, b"")
    with anyio.fail_after(5):
        assert await reader.read() == b""
    reader.close()


async def test_closing_a_reader_wakes_its_pending_read(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path, "c", stdin=False, stdout=True, stderr=False)
    reader = FifoReader.open(fifos.stdout)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await reader.read()

            tg.start_soon(read)
            await anyio.sleep(0.05)
            reader.close()
    assert reader.closed


async def test_stdin_writes_reach_the_shim_and_close_is_its_eof(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path, "c", stdin=True, stdout=False, stderr=False)
    stdin = FifoWriter.open(fifos.stdin)  # before the shim's side is open: no wait
    data = os.urandom(300 * 1024)  # more than a pipe holds: the writer waits for room
    result: list[bytes] = []

    async def shim() -> None:
        done = await anyio.run_process(["cat", fifos.stdin])
        result.append(done.stdout)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(shim)
            await stdin.write(data)
            stdin.close()
    assert result == [data]


async def test_closing_stdin_wakes_a_write_stuck_on_a_full_pipe(tmp_path: Path) -> None:
    fifos = create_fifos(tmp_path, "c", stdin=True, stdout=False, stderr=False)
    stdin = FifoWriter.open(fifos.stdin)  # nobody ever reads: the pipe fills up
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await stdin.write(b"x" * (1 << 20))

            tg.start_soon(write)
            await anyio.sleep(0.05)
            stdin.close()
    assert stdin.closed
    with pytest.raises(anyio.ClosedResourceError):
        await stdin.write(b"more")


# --- the CRI log format --------------------------------------------------------------------


async def test_lines_arrive_in_order_as_full_records(tmp_path: Path) -> None:
    lines = [b"line %d" % i for i in range(5000)]
    recs = await container_log(tmp_path, b"\n".join(lines) + b"\n")
    assert recs == [("stdout", "F", line) for line in lines]


async def test_a_long_line_is_cut_into_partial_records_then_a_full_rest(tmp_path: Path) -> None:
    stdout = b"a" * 25 + b"\n" + b"b" * 20 + b"\n" + b"c" * 10 + b"\n" + b"d" * 10 + b"\r\n"
    recs = await container_log(tmp_path, stdout, max_line_size=10)
    assert recs == [
        ("stdout", "P", b"a" * 10),
        ("stdout", "P", b"a" * 10),
        ("stdout", "F", b"a" * 5),
        ("stdout", "P", b"b" * 10),
        ("stdout", "F", b"b" * 10),
        ("stdout", "F", b"c" * 10),
        ("stdout", "F", b"d" * 10),  # the "\r\n" does not count against the limit
    ]


@pytest.mark.parametrize("unlimited", [0, -1])
async def test_a_non_positive_line_size_means_no_limit(tmp_path: Path, unlimited: int) -> None:
    line = b"x" * 200_000
    recs = await container_log(tmp_path, line + b"\n", max_line_size=unlimited)
    assert recs == [("stdout", "F", line)]


async def test_a_last_line_without_newline_is_partial_at_eof(tmp_path: Path) -> None:
    recs = await container_log(tmp_path, b"done\nno newline", b"err\ncut")
    assert recs == [
        ("stdout", "F", b"done"),
        ("stdout", "P", b"no newline"),
        ("stderr", "F", b"err"),
        ("stderr", "P", b"cut"),
    ]


async def test_crlf_is_stripped_but_a_lone_cr_is_content(tmp_path: Path) -> None:
    recs = await container_log(tmp_path, b"a\r\nb\rc\r\n\r\nz\r")
    assert recs == [
        ("stdout", "F", b"a"),
        ("stdout", "F", b"b\rc"),
        ("stdout", "F", b""),
        ("stdout", "P", b"z\r"),
    ]


async def test_empty_lines_are_full_records_with_empty_content(tmp_path: Path) -> None:
    recs = await container_log(tmp_path, b"\n\nx\n")
    assert recs == [("stdout", "F", b""), ("stdout", "F", b""), ("stdout", "F", b"x")]
    raw = (tmp_path / "pods" / "c1.log").read_bytes().split(b"\n")
    assert raw[0].endswith(b" stdout F ")  # the delimiter is there, the content is empty


async def test_records_do_not_depend_on_how_the_output_was_read(tmp_path: Path) -> None:
    """Fed byte by byte or at once, the records are the same (a line spans many reads)."""
    data = b"abcd\r\nabcd\rx\nabcdefghij\n\r\n" + b"q" * 9 + b"\r" + b"abcd\r"
    logs = []
    for name, pieces in [("whole", [data]), ("bytes", [data[i : i + 1] for i in range(len(data))])]:
        log = await ContainerLog.open(tmp_path / f"{name}.log", max_line_size=4)
        for piece in pieces:
            await log.write("stdout", piece)
        await log.finish("stdout")
        log.close()
        logs.append(records(tmp_path / f"{name}.log"))
    assert logs[0] == logs[1]
    assert joined(logs[0][:-4], "stdout") == [b"abcd", b"abcd\rx", b"abcdefghij", b""]
    assert logs[0][-4:] == [  # unfinished at EOF: all partial, a trailing "\r" kept
        ("stdout", "P", b"qqqq"),
        ("stdout", "P", b"qqqq"),
        ("stdout", "P", b"q\rab"),
        ("stdout", "P", b"cd\r"),
    ]


async def test_stdout_and_stderr_share_the_file_and_every_line_stays_whole(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=False, tty=False
    )
    go = tmp_path / "go"
    writer = (
        "import os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "while not os.path.exists(sys.argv[3]):\n"
        "    time.sleep(0.005)\n"
        "for i in range(3000):\n"
        "    os.write(fd, b'%s %d ' % (sys.argv[2].encode(), i) + b'.' * (i % 3000) + b'\\n')\n"
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            tg.start_soon(run_python, writer, io.fifos.stdout, "out", str(go))
            tg.start_soon(run_python, writer, io.fifos.stderr, "err", str(go))
            await anyio.sleep(0.2)
            go.touch()  # both at once, so that their output interleaves
            assert await io.wait_drained()
    io.close()
    recs = records(log_path)
    assert {tag for _, tag, _ in recs} == {"F"}
    switches = sum(a[0] != b[0] for a, b in itertools.pairwise(recs))
    assert switches > 2
    for stream, name in [("stdout", b"out"), ("stderr", b"err")]:
        assert joined(recs, stream) == [
            b"%s %d " % (name, i) + b"." * (i % 3000) for i in range(3000)
        ]


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("UTC0", "2023-11-14T22:13:20.12345678Z"),
        ("IST-05:30", "2023-11-15T03:43:20.12345678+05:30"),
        ("XYZ+03", "2023-11-14T19:13:20.12345678-03:00"),
    ],
)
def test_timestamps_are_gos_rfc3339nano_in_local_time(
    local_zone: pytest.MonkeyPatch, zone: str, expected: str
) -> None:
    local_zone.setenv("TZ", zone)
    time.tzset()
    ns = 1_700_000_000_123_456_780
    assert rfc3339_nano(ns) == expected
    assert rfc3339_nano(1_700_000_000_000_000_000) == expected.replace(".12345678", "")
    assert rfc3339_nano(1_700_000_000_100_000_000) == expected.replace(".12345678", ".1")
    assert rfc3339_nano(1_700_000_000_000_000_001) == expected.replace(".12345678", ".000000001")
    parsed = datetime.datetime.fromisoformat(expected.replace(".12345678", ".123456"))
    assert parsed.timestamp() == pytest.approx(ns / 1e9, abs=1e-6)


async def test_log_timestamps_are_now_and_parse_back(tmp_path: Path) -> None:
    before = time.time()
    await container_log(tmp_path, b"one\ntwo\n")
    after = time.time()
    for ts, _ in parse_log(tmp_path / "pods" / "c1.log"):
        assert TIMESTAMP.fullmatch(ts), ts
        seconds, _, rest = ts.partition(".")
        digits = re.match(r"\d*", rest)
        assert digits is not None
        zone = rest[digits.end() :] if rest else seconds[19:]
        micro = (digits.group() + "000000")[:6]
        when = datetime.datetime.fromisoformat(f"{seconds[:19]}.{micro}{zone}")
        assert before - 1e-6 <= when.timestamp() <= after + 1e-6


async def test_the_log_file_is_appended_to_and_made_0640(tmp_path: Path) -> None:
    log_path = tmp_path / "pods" / "c1.log"
    log_path.parent.mkdir()
    log_path.write_bytes(b"2020-01-01T00:00:00Z stdout F earlier\n")
    recs = await container_log(tmp_path, b"later\n")
    assert recs == [("stdout", "F", b"earlier"), ("stdout", "F", b"later")]
    umask = os.umask(0)
    os.umask(umask)
    log = await ContainerLog.open(tmp_path / "new" / "dirs" / "x.log")
    log.close()
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "dirs" / "x.log").st_mode) == 0o640 & ~umask


async def test_a_tty_container_has_only_stdout(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=True, tty=True
    )
    assert io.fifos.stderr == ""
    assert io.stdin is not None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            await write_fifo(io.fifos.stdout, b"$ prompt\r\n")
            assert await io.wait_drained()
    io.close()
    assert records(log_path) == [("stdout", "F", b"$ prompt")]


async def test_without_a_log_path_output_is_drained_and_dropped(tmp_path: Path) -> None:
    io = await ContainerIO.create(tmp_path / "io", "c", log_path="", stdin=False, tty=False)
    assert io.container_log is None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            await write_fifo(io.fifos.stdout, b"x" * (1 << 20))  # would block if not read
            await write_fifo(io.fifos.stderr, b"y\n")
            assert await io.wait_drained()
    io.close()
    await io.reopen()  # nothing to reopen, and no error
    assert names(tmp_path) == ["io"]


async def test_a_failing_log_disk_does_not_stop_the_draining(tmp_path: Path) -> None:
    """Like containerd: write errors are logged and the output still flows (/dev/full)."""
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path="/dev/full", stdin=False, tty=False
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            await write_fifo(io.fifos.stdout, b"lost\n" * 100_000)
            await write_fifo(io.fifos.stderr, b"")
            assert await io.wait_drained()
    io.close()


# --- reopen, resume, close ---------------------------------------------------------------

PHASED_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(100):
    os.write(fd, b"line %d\\n" % i)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
for i in range(100, 200):
    os.write(fd, b"line %d\\n" % i)
"""


async def test_reopen_after_rename_keeps_old_lines_old_and_new_lines_new(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=False, tty=False
    )
    go_on = tmp_path / "go-on"
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            tg.start_soon(write_fifo, io.fifos.stderr, b"")
            tg.start_soon(run_python, PHASED_WRITER, io.fifos.stdout, str(go_on))
            await wait_until(lambda: log_path.exists() and len(records(log_path)) == 100)
            log_path.rename(tmp_path / "c.log.1")  # the kubelet rotates
            await io.reopen()
            go_on.touch()
            assert await io.wait_drained()
    io.close()
    assert joined(records(tmp_path / "c.log.1"), "stdout") == [b"line %d" % i for i in range(100)]
    assert joined(records(log_path), "stdout") == [b"line %d" % i for i in range(100, 200)]


async def test_reopen_under_a_flood_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=False, tty=False
    )
    count = 200_000
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            tg.start_soon(write_fifo, io.fifos.stderr, b"")
            tg.start_soon(
                anyio.run_process, ["sh", "-c", f'seq 0 {count - 1} > "$1"', "sh", io.fifos.stdout]
            )
            rotations = 0
            while not io.drained:
                await anyio.sleep(0.02)
                rotations += 1
                log_path.rename(tmp_path / f"c.log.{rotations}")
                await io.reopen()
    io.close()
    assert rotations >= 2
    recs = []
    for n in range(1, rotations + 1):
        recs += records(tmp_path / f"c.log.{n}")
    recs += records(log_path)
    assert joined(recs, "stdout") == [b"%d" % i for i in range(count)]


async def test_a_failed_reopen_keeps_writing_to_the_old_file(tmp_path: Path) -> None:
    log = await ContainerLog.open(tmp_path / "pods" / "c.log")
    await log.write("stdout", b"before\n")
    (tmp_path / "pods").rename(tmp_path / "moved")
    (tmp_path / "pods").write_text("not a directory")
    with pytest.raises(Internal, match="cannot reopen"):
        await log.reopen()
    await log.write("stdout", b"after\n")
    log.close()
    assert records(tmp_path / "moved" / "c.log") == [
        ("stdout", "F", b"before"),
        ("stdout", "F", b"after"),
    ]
    with pytest.raises(Internal, match="closed"):
        await log.reopen()


RESUME_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(300):
    os.write(fd, b"line %d " % i)  # a line written in two pieces: a reader may stop between
    os.write(fd, b"end\\n")
    time.sleep(0.002)
"""


async def test_a_new_read_end_resumes_the_log_where_the_old_one_stopped(tmp_path: Path) -> None:
    """criproxy restarts while the shim writes: the shim's own read end keeps the pipe."""
    fifos = create_fifos(tmp_path / "io", "c", stdin=False, stdout=True, stderr=False)
    shim_read_end = os.open(fifos.stdout, os.O_RDONLY | os.O_NONBLOCK)
    log = await ContainerLog.open(tmp_path / "c.log")
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                first = FifoReader.open(fifos.stdout)
                tg.start_soon(run_python, RESUME_WRITER, fifos.stdout)
                with anyio.move_on_after(0.25):
                    await pump_to_log(first, "stdout", log)
                first.close()  # criproxy is gone ...
                lines_before = len(records(tmp_path / "c.log"))
                await anyio.sleep(0.2)  # ... while the container keeps writing
                second = FifoReader.open(fifos.stdout)
                await pump_to_log(second, "stdout", log)  # until the writer is done
                second.close()
    finally:
        os.close(shim_read_end)
        log.close()
    assert lines_before > 0
    recs = records(tmp_path / "c.log")
    assert len(recs) > lines_before
    assert joined(recs, "stdout") == [b"line %d end" % i for i in range(300)]


async def test_close_stops_run_and_still_writes_what_was_read(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=True, tty=False
    )
    # A writer that never finishes: a leaked process holding the container's stdout.
    holder = (
        "import os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "os.write(fd, b'whole\\nhalf a line')\n"
        "time.sleep(30)\n"
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            tg.start_soon(run_python, holder, io.fifos.stdout)
            await wait_until(lambda: log_path.stat().st_size > 0)
            assert not await io.wait_drained(0.2)
            io.close()
            assert io.stdin is not None and io.stdin.closed
            await wait_until(lambda: io.container_log is not None and io.container_log.closed)
            tg.cancel_scope.cancel()  # the holder process
    assert records(log_path) == [("stdout", "F", b"whole"), ("stdout", "P", b"half a line")]
    assert not io.drained


async def test_close_before_run_closes_everything(tmp_path: Path) -> None:
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(tmp_path / "c.log"), stdin=True, tty=False
    )
    io.close()
    assert io.container_log is not None and io.container_log.closed
    assert io.stdin is not None and io.stdin.closed
    await io.run()  # a run scheduled before the close returns at once
    assert not io.drained


async def test_attach_reopens_the_fifos_of_a_running_container(tmp_path: Path) -> None:
    first = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(tmp_path / "c.log"), stdin=False, tty=False
    )
    shim_ends = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in first.fifos.paths()]
    writers = [os.open(p, os.O_WRONLY | os.O_NONBLOCK) for p in first.fifos.paths()]
    first.close()  # a criproxy that died
    os.write(writers[0], b"written while criproxy was down\n")
    io = await ContainerIO.attach(
        tmp_path / "io", "c", log_path=str(tmp_path / "c.log"), stdin=False, tty=False
    )
    try:
        assert io.fifos == first.fifos
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(io.run)
                os.write(writers[1], b"and after\n")
                for fd in writers:
                    os.close(fd)
                assert await io.wait_drained()
    finally:
        for fd in shim_ends:
            os.close(fd)
    io.close()
    assert records(tmp_path / "c.log") == [
        ("stdout", "F", b"written while criproxy was down"),
        ("stderr", "F", b"and after"),
    ]


# --- ExecSync ----------------------------------------------------------------------------


def test_capped_buffer_keeps_the_first_bytes_and_drops_the_rest() -> None:
    buffer = CappedBuffer(limit=10)
    buffer.write(b"0123")
    assert not buffer.truncated
    buffer.write(b"456789ab")
    buffer.write(b"cd")
    assert buffer.getvalue() == b"0123456789"
    assert len(buffer) == 10
    assert buffer.truncated


async def test_exec_output_is_captured_capped_and_its_fifos_removed(tmp_path: Path) -> None:
    io = await ExecIO.create(tmp_path, "e1", limit=1000)
    assert io.fifos.stdin == ""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            await write_fifo(io.fifos.stdout, b"o" * 300_000)  # drained past the cap
            await write_fifo(io.fifos.stderr, b"oops\n")
            assert await io.wait_drained()
    io.close()
    assert io.stdout == b"o" * 1000
    assert io.stderr == b"oops\n"
    assert io.truncated
    assert names(tmp_path) == []


# --- the event loop ----------------------------------------------------------------------


async def test_the_event_loop_keeps_ticking_while_a_container_floods(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"
    io = await ContainerIO.create(
        tmp_path / "io", "c", log_path=str(log_path), stdin=False, tty=False
    )
    count = 300_000
    worst_gap = 0.0
    ticks = 0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(io.run)
            tg.start_soon(write_fifo, io.fifos.stderr, b"")
            tg.start_soon(
                anyio.run_process,
                [
                    "sh",
                    "-c",
                    f'yes 0123456789abcdefghij | head -n {count} > "$1"',
                    "sh",
                    io.fifos.stdout,
                ],
            )
            while not io.drained:
                before = time.monotonic()
                await anyio.sleep(0.005)
                worst_gap = max(worst_gap, time.monotonic() - before)
                ticks += 1
    io.close()
    assert len(records(log_path)) == count
    assert ticks > 10
    assert worst_gap < 0.25, f"the loop stalled for {worst_gap:.3f}s"
