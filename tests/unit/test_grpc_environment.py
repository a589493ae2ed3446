"""criproxy's gRPC settings: set by the command before grpc loads, beside the user's own."""

from __future__ import annotations

import subprocess
import sys

from criproxy.grpc_env import GRPC_EXPERIMENTS_OFF, grpc_environment


def test_defaults_when_the_user_sets_nothing() -> None:
    environ: dict[str, str] = {}
    grpc_environment(environ)
    assert environ == {
        "GRPC_ENABLE_FORK_SUPPORT": "0",
        "GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener",
    }


def test_the_users_own_settings_are_kept() -> None:
    environ = {"GRPC_ENABLE_FORK_SUPPORT": "1", "GRPC_EXPERIMENTS": "some_flag"}
    grpc_environment(environ)
    assert environ["GRPC_ENABLE_FORK_SUPPORT"] == "1"
    assert environ["GRPC_EXPERIMENTS"] == "some_flag,-event_engine_client,-event_engine_listener"


def test_a_user_choice_on_the_same_experiment_wins() -> None:
    environ = {"GRPC_EXPERIMENTS": "event_engine_client"}
    grpc_environment(environ)
    assert environ["GRPC_EXPERIMENTS"] == "event_engine_client,-event_engine_listener"


def test_the_pinned_grpc_knows_the_experiments_criproxy_turns_off() -> None:
    """A grpcio that dropped them would log `Unknown experiment` at every start."""
    body = (
        "import os, sys, criproxy.cli\n"
        "assert 'grpc' not in sys.modules, 'grpc loaded before its settings'\n"
        "import grpc.aio, asyncio\n"
        "async def main():\n"
        "    await grpc.aio.insecure_channel('unix:///nonexistent/criproxy-test.sock').close()\n"
        "asyncio.run(main())\n"
        "print(os.environ['GRPC_EXPERIMENTS'])\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Unknown experiment" not in done.stderr
    assert done.stdout.strip() == ",".join(f"-{name}" for name in GRPC_EXPERIMENTS_OFF)
