"""One plugin process: exit status and outputs, late reaping by the runner's own thread,
outputs held open elsewhere."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from criproxy.network.cni import plugin
from criproxy.network.cni.plugin import PluginRunner

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "plugin"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def zombie_children() -> list[int]:
    """Pids of this process's children that exited and were not reaped yet."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.append(int(entry))
    return found


def reaper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cni-reaper"]


async def run(
    path: str, stdin: bytes = b"{}", runner: PluginRunner | None = None
) -> tuple[int, bytes, bytes]:
    runner = runner or PluginRunner()
    return await runner.exec(path, stdin, {"PATH": "/usr/bin:/bin"})


async def test_exit_status_stdout_stderr_and_stdin(tmp_path: Path) -> None:
    path = script(tmp_path, 'read line; echo "got $line"; echo oops >&2; exit 3\n')
    code, out, err = await run(path, b"config\n")
    assert (code, out, err) == (3, b"got config\n", b"oops\n")


async def test_a_plugin_ended_by_a_signal_gives_minus_the_signal(tmp_path: Path) -> None:
    code, _, _ = await run(script(tmp_path, "kill -KILL $$\n"))
    assert code == -signal.SIGKILL


async def test_a_plugin_that_does_not_read_stdin_is_no_broken_pipe(tmp_path: Path) -> None:
    code, out, _ = await run(script(tmp_path, "echo done\n"), b"x" * (1 << 20))
    assert (code, out) == (0, b"done\n")


@pytest.mark.parametrize("owned", [True, False], ids=["run", "not-run"])
async def test_every_plugin_is_reaped_soon_after_its_exit(tmp_path: Path, owned: bool) -> None:
    """With its owner running it, the reaper thread reaps; without, each run reaps its own."""
    path = script(tmp_path, "exit 0\n")
    runner = PluginRunner()
    async with anyio.create_task_group() as tg:
        if owned:
            tg.start_soon(runner.run)
        for _ in range(5):
            assert (await run(path, runner=runner))[0] == 0
        if not owned:
            assert zombie_children() == []
        for _ in range(200):  # up to 10 s
            if not zombie_children():
                break
            await anyio.sleep(0.05)
        assert zombie_children() == []
        tg.cancel_scope.cancel()


async def test_shutdown_reaps_what_the_reaper_holds_and_ends_its_thread(tmp_path: Path) -> None:
    runner = PluginRunner(reap_delay=60)
    slow = await anyio.to_thread.run_sync(functools.partial(subprocess.Popen, ["sleep", "30"]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await anyio.lowlevel.checkpoint()
        assert len(reaper_threads()) == 1
        assert (await run(script(tmp_path, "exit 0\n"), runner=runner))[0] == 0
        runner._reaper.reap_soon(slow)  # still running: held, polled, never waited on
        await anyio.sleep(0.2)
        assert len(zombie_children()) == 1  # the plugin, held for its reap delay
        assert slow.poll() is None
        tg.cancel_scope.cancel()
    assert reaper_threads() == []
    assert zombie_children() == []
    assert slow.returncode == -signal.SIGKILL


async def test_a_runner_whose_run_ended_reaps_at_once(tmp_path: Path) -> None:
    runner = PluginRunner(reap_delay=60)
    with anyio.move_on_after(0.1):
        await runner.run()
    assert (await run(script(tmp_path, "exit 0\n"), runner=runner))[0] == 0
    assert zombie_children() == []
    assert reaper_threads() == []


async def test_a_child_holding_stdin_does_not_hold_the_call(tmp_path: Path) -> None:
    """The config is a file, not a pipe: nothing waits for a reader to take it."""
    pid_file = tmp_path / "child.pid"
    body = f"sleep 30 <&0 >/dev/null 2>&1 &\necho $! > {pid_file}\necho '{{}}'\n"
    code, out, _ = await run(script(tmp_path, body), b"x" * (1 << 20))
    child = int(pid_file.read_text())
    try:
        assert (code, out) == (0, b"{}\n")
        os.kill(child, 0)  # still running, stdin open: the call did not wait for it
    finally:
        os.kill(child, signal.SIGKILL)


async def test_stderr_reopened_by_the_plugin_keeps_every_line(tmp_path: Path) -> None:
    path = script(tmp_path, "echo first-line >&2\necho second >/dev/stderr\necho third >&2\n")
    _, _, err = await run(path)
    assert err == b"first-line\nsecond\nthird\n"


async def test_output_beyond_the_cap_is_read_and_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin, "_OUTPUT_CAP", 1000)
    code, out, _ = await run(script(tmp_path, "head -c 300000 /dev/zero\n"))
    assert (code, out) == (0, b"\0" * 1000)


async def test_a_child_holding_stdout_holds_the_call_only_briefly(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    path = script(tmp_path, f"sleep 30 &\necho $! > {pid_file}\necho '{{}}'\nexit 4\n")
    code, out, _ = await run(path)
    child = int(pid_file.read_text())
    try:
        assert (code, out) == (4, b"{}\n")
        os.kill(child, 0)  # still running, stdout open: the call ended at the plugin's exit
    finally:
        os.kill(child, signal.SIGKILL)


def probe(body: str) -> str:
    """Run `body` in a fresh interpreter (process-wide signal and gRPC settings)."""
    done = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_inherited_ignored_sigchld_is_undone_so_failures_stay_failures(
    tmp_path: Path,
) -> None:
    # It waits a little, so that its pidfd is open before the kernel reaps it.
    path = script(tmp_path, "sleep 0.2\necho partial\nexit 7\n")
    run_it = f"code, out, _ = _PluginProcess({path!r}, b'{{}}', {{}}, _Reaper(0.05)).run()\n"
    ignored = probe(
        "import signal, sys\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "from criproxy.network.cni.plugin import _PluginProcess, _Reaper\n"
        f"{run_it}"
        "sys.stdout.write(repr((code, out)))\n"
    )
    # The kernel reaped it: no status to read, the output still comes back.
    assert ignored == repr((0, b"partial\n"))
    restored = probe(
        "import signal, sys\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "from criproxy.cli import default_sigchld\n"
        "from criproxy.network.cni.plugin import _PluginProcess, _Reaper\n"
        "default_sigchld()\n"
        f"{run_it}"
        "sys.stdout.write(repr((code, out)))\n"
    )
    assert restored == repr((7, b"partial\n"))
