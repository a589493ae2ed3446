from __future__ import annotations

import json

import anyio
import pytest

from criproxy.containers.streams import SessionStreams, TerminalSize
from criproxy.errors import Internal
from criproxy.streaming.remotecommand import (
    StreamOptions,
    failure_status,
    final_status,
    run_session,
    sizes,
    status_message,
)


@pytest.mark.parametrize(
    ("options", "protocol", "expected"),
    [
        (
            StreamOptions(False, True, True, False),
            "v4.channel.k8s.io",
            {"error", "stdout", "stderr"},
        ),
        (
            StreamOptions(True, True, False, True),
            "v4.channel.k8s.io",
            {"error", "stdin", "stdout", "resize"},
        ),
        (
            StreamOptions(True, True, True, True),
            "v5.channel.k8s.io",
            {"error", "stdin", "stdout", "resize"},
        ),
        (StreamOptions(True, True, False, True), "v2.channel.k8s.io", {"error", "stdin", "stdout"}),
        (StreamOptions(False, False, True, False), "channel.k8s.io", {"error", "stderr"}),
    ],
)
def test_the_streams_a_session_waits_for(
    options: StreamOptions, protocol: str, expected: set[str]
) -> None:
    assert options.expected(protocol) == expected


def test_v4_and_later_report_a_json_status_earlier_versions_only_failures() -> None:
    ok = final_status(0, ("true",))
    failed = final_status(3, ("sh", "-c", "exit 3"))
    assert status_message("v4.channel.k8s.io", ok) == b'{"metadata":{},"status":"Success"}'
    assert json.loads(status_message("v5.channel.k8s.io", failed)) == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        "error executing command [sh -c exit 3], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    assert status_message("v2.channel.k8s.io", ok) == b""
    assert status_message("channel.k8s.io", failed) == (
        b"command terminated with non-zero exit code: "
        b"error executing command [sh -c exit 3], exit code 3"
    )
    broken = failure_status(Internal("no such process"))
    assert json.loads(status_message("v4.channel.k8s.io", broken))["code"] == 500
    assert b"no such process" in status_message("v3.channel.k8s.io", broken)


def test_resize_messages_split_and_joined_anyhow_become_sizes() -> None:
    chunks = [b'{"Width":80,', b'"Height":24}{"Width": 100, "Height": 30}', b"  ", b'{"bad": 1}']

    async def collect() -> list[TerminalSize]:
        pending = list(chunks)

        async def receive() -> bytes:
            if not pending:
                raise anyio.EndOfStream
            return pending.pop(0)

        return [size async for size in sizes(receive)]

    assert anyio.run(collect) == [TerminalSize(80, 24), TerminalSize(100, 30)]


def test_a_session_that_fails_inside_its_task_groups_reports_a_failure_status() -> None:
    async def failing(streams: SessionStreams) -> int:
        raise ExceptionGroup("tasks", [ExceptionGroup("inner", [Internal("no such FIFO")])])

    async def exits_3(streams: SessionStreams) -> int:
        return 3

    async def broken(streams: SessionStreams) -> int:
        raise ExceptionGroup("tasks", [ZeroDivisionError()])

    status = anyio.run(run_session, failing, SessionStreams(), ("true",))
    assert status["status"] == "Failure"
    assert "no such FIFO" in status["message"]
    assert anyio.run(run_session, exits_3, SessionStreams(), ("x",))["details"] == {
        "causes": [{"reason": "ExitCode", "message": "3"}]
    }
    with pytest.raises(ExceptionGroup):  # a bug in criproxy is not dressed up as a status
        anyio.run(run_session, broken, SessionStreams(), ("true",))
