"""Exec, attach and port-forward through criproxy's streaming server, with real containers,
spoken to by clients written against the protocols (HTTP/1.1 upgrade, SPDY/3.1, remote
command v1-v5, portforward.k8s.io), as kubectl and crictl speak them."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.streaming.spdy import SpdyConnection
from tests.integration.containers_env import ContainerEnv
from tests.support.streaming_client import (
    TunnelStream,
    WebSocketClient,
    remotecommand,
    upgrade,
    ws_remotecommand,
)


def _exec_url(ctr_env: ContainerEnv, container: str, *cmd: str, **flags: bool) -> str:
    flags = {"stdout": True, "stderr": True, **flags}
    if flags.get("tty"):
        flags["stderr"] = False
    request = api_pb2.ExecRequest(container_id=container, cmd=list(cmd), **flags)
    url = ctr_env.runtime.Exec(request).url
    assert url.startswith("http://127.0.0.1:")
    return str(url)


@pytest.fixture(scope="module")
def sleeper(ctr_env: ContainerEnv) -> str:
    pod_id, pod = ctr_env.pod("streams")
    return ctr_env.run(pod_id, pod, "sleeper", args=["sleep 100000"])


def test_exec_output_streams_and_exit_codes(ctr_env: ContainerEnv, sleeper: str) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "echo out; echo err >&2")
    result = anyio.run(remotecommand, url)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert result.status == {"metadata": {}, "status": "Success"}

    url = _exec_url(ctr_env, sleeper, "sh", "-c", "exit 3")
    result = anyio.run(remotecommand, url)
    assert result.status == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        "error executing command [sh -c exit 3], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }


def test_an_exec_may_ask_for_one_output_stream_only(ctr_env: ContainerEnv, sleeper: str) -> None:
    both = ("sh", "-c", "echo out; echo err >&2")
    result = anyio.run(
        functools.partial(
            remotecommand, _exec_url(ctr_env, sleeper, *both, stderr=False), stderr=False
        )
    )
    assert (result.stdout, result.status["status"]) == (b"out\n", "Success")
    result = anyio.run(
        functools.partial(
            remotecommand, _exec_url(ctr_env, sleeper, *both, stdout=False), stdout=False
        )
    )
    assert (result.stderr, result.status["status"]) == (b"err\n", "Success")


def test_exec_stdin_is_piped_and_its_end_ends_the_reader(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "cat; echo done", stdin=True)
    data = b"".join(b"line %d\n" % i for i in range(5000))  # well past any window
    result = anyio.run(lambda: remotecommand(url, stdin=data))
    assert result.stdout == data + b"done\n"
    assert result.status["status"] == "Success"


def test_exec_with_a_terminal_sees_its_resize(ctr_env: ContainerEnv, sleeper: str) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "sleep 0.5; stty size", tty=True)
    result = anyio.run(lambda: remotecommand(url, tty=True, stderr=False, resize=(100, 30)))
    assert result.stdout.strip() == b"30 100"
    assert result.stderr == b""


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (("v5.channel.k8s.io", "v4.channel.k8s.io"), "v5.channel.k8s.io"),
        (("v3.channel.k8s.io",), "v3.channel.k8s.io"),
        (("v2.channel.k8s.io",), "v2.channel.k8s.io"),
        (("channel.k8s.io",), "channel.k8s.io"),
    ],
)
def test_every_remote_command_version_is_spoken(
    ctr_env: ContainerEnv, sleeper: str, offered: tuple[str, ...], chosen: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "echo hi; exit 2")
    result = anyio.run(lambda: remotecommand(url, protocols=offered))
    assert result.protocol == chosen
    assert result.stdout == b"hi\n"
    if chosen.startswith(("v4", "v5")):
        assert result.status["details"]["causes"][0]["message"] == "2"
    else:  # earlier versions write only an error's text
        assert b"exit code 2" in result.error


def test_tokens_are_single_use_and_an_unknown_protocol_is_refused(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "true")
    refused = anyio.run(lambda: upgrade(url, ("v9.channel.k8s.io",)))
    assert refused.status == 403
    assert b"v4.channel.k8s.io" in refused.body
    used = anyio.run(lambda: upgrade(url, ("v4.channel.k8s.io",)))
    assert used.status == 404  # the refused attempt used the token up
    unknown = anyio.run(lambda: upgrade(url.rsplit("/", 1)[0] + "/nope", ("v4.channel.k8s.io",)))
    assert unknown.status == 404


def test_exec_and_attach_refuse_bad_requests(ctr_env: ContainerEnv, sleeper: str) -> None:
    cases = [
        (api_pb2.ExecRequest(cmd=["true"], stdout=True), grpc.StatusCode.INVALID_ARGUMENT),
        (
            api_pb2.ExecRequest(container_id=sleeper, cmd=["true"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            api_pb2.ExecRequest(container_id=sleeper, cmd=["true"], tty=True, stderr=True),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            api_pb2.ExecRequest(container_id="f" * 64, cmd=["true"], stdout=True),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            ctr_env.runtime.Exec(request)
        assert err.value.code() == code, request
    pod_id, pod = ctr_env.pod("exited")
    done = ctr_env.run(pod_id, pod, "done", args=["true"])
    ctr_env.wait_exited(done)
    with pytest.raises(grpc.RpcError) as err:
        ctr_env.runtime.Attach(api_pb2.AttachRequest(container_id=done, stdout=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        ctr_env.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id="f" * 64))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_twenty_concurrent_execs_all_complete(ctr_env: ContainerEnv, sleeper: str) -> None:
    urls = [_exec_url(ctr_env, sleeper, "sh", "-c", f"echo {i}") for i in range(20)]
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = (await remotecommand(urls[i])).stdout

    async def all_of_them() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)

    anyio.run(all_of_them)
    assert results == {i: b"%d\n" % i for i in range(20)}


def test_a_client_that_goes_away_leaves_no_exec_process(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "sleep", "4242")

    async def start_and_drop() -> None:
        up = await upgrade(url, ("v4.channel.k8s.io",))
        spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
        async with anyio.create_task_group() as tg:
            tg.start_soon(spdy.run)
            for name in ("error", "stdout", "stderr"):
                await spdy.open({"streamtype": name})
            await anyio.sleep(1.0)  # the process runs now
            await up.stream.aclose()  # gone, without a word
            tg.cancel_scope.cancel()

    anyio.run(start_and_drop)
    deadline = time.monotonic() + 15
    while "sleep 4242" in ctr_env.exec(sleeper, "ps", "-o", "args").stdout.decode():
        assert time.monotonic() < deadline, "the exec of a client that went away still runs"
        time.sleep(0.2)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _stalled_reader(url: str, pid: int, stdin: bytes | None = None) -> tuple[int, int]:
    """A session whose client reads nothing for two seconds while the process floods its
    stdout, then reads 4 MiB: (criproxy's RSS growth while stalled, bytes read after)."""
    up = await upgrade(url, ("v4.channel.k8s.io",))
    spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
    async with anyio.create_task_group() as tg:
        tg.start_soon(spdy.run)
        await spdy.open({"streamtype": "error"})
        if stdin is not None:
            await (await spdy.open({"streamtype": "stdin"})).send(stdin)
        stdout = await spdy.open({"streamtype": "stdout"})
        await anyio.sleep(0.5)  # the flood fills every buffer on the way
        before = _rss(pid)
        await anyio.sleep(2.0)
        grown = _rss(pid) - before
        got = 0
        with anyio.fail_after(20):
            while got < 4 * 1024 * 1024:
                got += len(await stdout.receive(1 << 20))
        tg.cancel_scope.cancel()
    await up.stream.aclose()
    return grown, got


def test_an_exec_that_floods_is_read_at_the_clients_pace(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    proxy = ctr_env.pods.proxy
    assert proxy.proc is not None
    url = _exec_url(ctr_env, sleeper, "yes", "0123456789abcdef", stderr=False)
    grown, got = anyio.run(_stalled_reader, url, proxy.proc.pid)
    assert grown < 16 * 1024 * 1024, f"criproxy grew {grown} bytes behind a stalled client"
    assert got >= 4 * 1024 * 1024


def test_an_attached_client_that_stops_reading_holds_the_flood_back(
    ctr_env: ContainerEnv,
) -> None:
    pod_id, pod = ctr_env.pod("flood")
    container = ctr_env.run(
        pod_id,
        pod,
        "flood",
        command=["/bin/sh", "-c"],
        args=["read go; yes 0123456789abcdef"],
        stdin=True,
    )
    proxy = ctr_env.pods.proxy
    assert proxy.proc is not None
    log = ctr_env.log_path(container)
    url = ctr_env.runtime.Attach(
        api_pb2.AttachRequest(container_id=container, stdin=True, stdout=True)
    ).url
    sizes: list[int] = []

    async def watch_log() -> None:
        await anyio.sleep(1.5)  # into the stall
        sizes.append(log.stat().st_size)
        await anyio.sleep(1.0)
        sizes.append(log.stat().st_size)

    async def both() -> tuple[int, int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_log)
            return await _stalled_reader(url, proxy.proc.pid, stdin=b"go\n")  # type: ignore[union-attr]

    try:
        grown, got = anyio.run(both)
    finally:
        ctr_env.stop(container)
    assert grown < 16 * 1024 * 1024, f"criproxy grew {grown} bytes behind a stalled client"
    assert got >= 4 * 1024 * 1024
    # held back as with containerd: the log waits with the client
    assert sizes[1] - sizes[0] < 1024 * 1024, sizes


def test_attach_shares_the_containers_stdin_and_output(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("attach")
    container = ctr_env.run(
        pod_id,
        pod,
        "echoer",
        command=["/bin/sh", "-c"],
        args=["cat; echo bye"],
        stdin=True,
        stdin_once=True,
    )
    url = ctr_env.runtime.Attach(
        api_pb2.AttachRequest(container_id=container, stdin=True, stdout=True, stderr=True)
    ).url
    result = anyio.run(lambda: remotecommand(url, stdin=b"hello\n"))
    assert result.stdout == b"hello\nbye\n"  # stdin_once: its end is the container's EOF
    assert result.status["status"] == "Success"
    assert ctr_env.wait_exited(container).exit_code == 0
    assert ctr_env.output(container) == "hello\nbye\n"  # and the log has it all


def test_port_forward_reaches_a_server_in_the_pod(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("forward")
    ctr_env.run(
        pod_id,
        pod,
        "web",
        args=["mkdir -p /www && echo hello-from-pod > /www/index.html && httpd -f -p 8080 -h /www"],
    )
    time.sleep(1.0)
    url = ctr_env.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id)).url

    async def get() -> tuple[bytes, bytes]:
        up = await upgrade(url, ("portforward.k8s.io",))
        assert up.status == 101 and up.protocol == "portforward.k8s.io"
        spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
        body, error = bytearray(), bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(spdy.run)
            headers = {"port": "8080", "requestid": "0"}
            err = await spdy.open({**headers, "streamtype": "error"})
            data = await spdy.open({**headers, "streamtype": "data"})
            await data.send(b"GET /index.html HTTP/1.0\r\n\r\n")
            try:
                while True:
                    body.extend(await data.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            with anyio.move_on_after(2):
                try:
                    while True:
                        error.extend(await err.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            tg.cancel_scope.cancel()
        await spdy.aclose()
        return bytes(body), bytes(error)

    body, error = anyio.run(get)
    assert body.startswith(b"HTTP/1.") and body.endswith(b"hello-from-pod\n"), body
    assert error == b""


# --- over WebSocket -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"]
)
def test_exec_over_websocket_channels(ctr_env: ContainerEnv, sleeper: str, protocol: str) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "echo out; echo err >&2; exit 5")
    result = anyio.run(lambda: ws_remotecommand(url, protocol=protocol))
    assert result.protocol == protocol
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    status = result.status
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"][0]["message"] == "5"


def test_exec_stdin_over_websocket_ends_with_the_v5_close_signal(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "cat; echo end", stdin=True)
    result = anyio.run(lambda: ws_remotecommand(url, stdin=b"piped\n"))
    assert result.stdout == b"piped\nend\n"
    assert result.status == {"metadata": {}, "status": "Success"}


def test_an_unknown_websocket_subprotocol_is_refused(ctr_env: ContainerEnv, sleeper: str) -> None:
    url = _exec_url(ctr_env, sleeper, "true")
    with pytest.raises(ConnectionRefusedError) as refused:
        anyio.run(lambda: WebSocketClient.connect(url, ("v9.channel.k8s.io",)))
    assert refused.value.args[0] == 400


@pytest.fixture(scope="module")
def web_pod(ctr_env: ContainerEnv) -> str:
    pod_id, pod = ctr_env.pod("webws")
    ctr_env.run(
        pod_id,
        pod,
        "web",
        args=["mkdir -p /www && echo hello-over-ws > /www/index.html && httpd -f -p 8081 -h /www"],
    )
    time.sleep(1.0)
    return pod_id


def test_port_forward_over_websocket_channels(ctr_env: ContainerEnv, web_pod: str) -> None:
    url = ctr_env.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=web_pod)).url

    async def get() -> bytes:
        client = await WebSocketClient.connect(url + "?port=8081", ("v4.channel.k8s.io",))
        prefixes = [await client.receive() for _ in range(2)]
        assert prefixes == [b"\x00\x91\x1f", b"\x01\x91\x1f"]  # 8081, little-endian
        await client.send(b"\x00GET /index.html HTTP/1.0\r\n\r\n")
        body = bytearray()
        with anyio.move_on_after(10):
            while not body.endswith(b"hello-over-ws\n"):
                message = await client.receive()
                assert isinstance(message, bytes) and message[0] == 0, message
                body.extend(message[1:])
        await client.aclose()
        return bytes(body)

    body = anyio.run(get)
    assert body.startswith(b"HTTP/1.") and body.endswith(b"hello-over-ws\n"), body


def test_port_forward_over_spdy_tunnelled_in_websocket(ctr_env: ContainerEnv, web_pod: str) -> None:
    url = ctr_env.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=web_pod)).url

    async def get() -> bytes:
        client = await WebSocketClient.connect(url, ("SPDY/3.1+portforward.k8s.io",))
        assert client.protocol == "SPDY/3.1+portforward.k8s.io"
        spdy = SpdyConnection(TunnelStream(client), server=False)
        body = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(spdy.run)
            headers = {"port": "8081", "requestid": "1"}
            await spdy.open({**headers, "streamtype": "error"})
            data = await spdy.open({**headers, "streamtype": "data"})
            await data.send(b"GET /index.html HTTP/1.0\r\n\r\n")
            with anyio.move_on_after(10):
                while not body.endswith(b"hello-over-ws\n"):
                    body.extend(await data.receive())
            tg.cancel_scope.cancel()
        await client.aclose()
        return bytes(body)

    body = anyio.run(get)
    assert body.startswith(b"HTTP/1.") and body.endswith(b"hello-over-ws\n"), body


def test_a_criproxy_restart_ends_open_sessions_and_their_processes(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    url = _exec_url(ctr_env, sleeper, "sh", "-c", "sleep 4545", stdin=True)
    proxy = ctr_env.pods.proxy

    async def open_session() -> None:
        up = await upgrade(url, ("v4.channel.k8s.io",))
        spdy = SpdyConnection(up.stream, server=False, initial=up.initial)
        ended = anyio.Event()

        async def run() -> None:
            await spdy.run()
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for name in ("error", "stdin", "stdout", "stderr"):
                await spdy.open({"streamtype": name})
            await anyio.sleep(1.0)  # the process runs now
            proxy.kill()  # kill -9, mid-session
            with anyio.fail_after(10):
                await ended.wait()  # the session's connection ends with criproxy

    anyio.run(open_session)
    proxy.start()
    deadline = time.monotonic() + 15
    while "sleep 4545" in ctr_env.exec(sleeper, "ps", "-o", "args").stdout.decode():
        assert time.monotonic() < deadline, "the exec of a killed criproxy's session still runs"
        time.sleep(0.2)
    io_dir = proxy.state / "containers" / sleeper
    assert all(path.name.startswith(sleeper) for path in io_dir.iterdir())  # its FIFOs only


def test_a_session_ends_when_its_container_is_removed(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("removed")
    doomed = ctr_env.run(pod_id, pod, "doomed", args=["sleep 100000"])
    url = _exec_url(ctr_env, doomed, "sleep", "1000")

    async def session_and_removal() -> tuple[Any, float]:
        result: list[Any] = []

        async def run_session() -> None:
            result.append(await remotecommand(url, timeout=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_session)
            await anyio.sleep(1.0)
            started = time.monotonic()
            await anyio.to_thread.run_sync(ctr_env.remove, doomed)
        return result[0], time.monotonic() - started

    result, seconds = anyio.run(session_and_removal)
    assert seconds < 15
    assert result.status["status"] == "Failure"  # the exec was killed with its container


def test_sessions_leave_no_file_descriptor_thread_or_exec_process_behind(
    ctr_env: ContainerEnv, sleeper: str
) -> None:
    """Counted after sessions of each kind: criproxy's fds and threads, and the exec
    processes containerd still holds (the shim keeps `<exec id>.pid` in the container's
    bundle until the process is deleted)."""
    proxy = ctr_env.pods.proxy
    assert proxy.proc is not None
    proc = Path(f"/proc/{proxy.proc.pid}")
    tasks = ctr_env.pods.containerd.base / "state" / "io.containerd.runtime.v2.task"
    bundle = tasks / "k8s.io" / sleeper

    def counts() -> dict[str, int]:
        return {
            "fds": len(list((proc / "fd").iterdir())),
            "threads": len(list((proc / "task").iterdir())),
            "exec processes": sum(1 for p in bundle.glob("*.pid") if p.name != "init.pid"),
        }

    anyio.run(remotecommand, _exec_url(ctr_env, sleeper, "true"))  # warm: lazy imports, pools
    anyio.run(ws_remotecommand, _exec_url(ctr_env, sleeper, "true"))
    time.sleep(0.5)
    before = counts()
    assert bundle.is_dir() and before["exec processes"] == 0, before
    for _ in range(10):
        anyio.run(remotecommand, _exec_url(ctr_env, sleeper, "sh", "-c", "echo x; echo y >&2"))
        url = _exec_url(ctr_env, sleeper, "cat", stdin=True)
        anyio.run(functools.partial(remotecommand, url, stdin=b"z" * 100_000))
        anyio.run(ws_remotecommand, _exec_url(ctr_env, sleeper, "true"))
        ctr_env.exec(sleeper, "true")
    deadline = time.monotonic() + 10
    while (now := counts()) != before:
        more = {k: now[k] - before[k] for k in now if now[k] > before[k]}
        if not more:
            break  # fewer threads than before: idle workers retired
        assert time.monotonic() < deadline, f"more than before the sessions: {more}"
        time.sleep(0.2)
