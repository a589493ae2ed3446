"""Managed mode: criproxy starts, supervises, adopts and stops its own containerd."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import Criproxy, pid_alive, wait_until, write_bridge_conflist


def managed(short_tmp: Path) -> Criproxy:
    proxy = Criproxy(short_tmp / "m")
    write_bridge_conflist(proxy.cni_dir)
    return proxy


def containerd_pid(proxy: Criproxy) -> int:
    return int((proxy.state / "containerd" / "containerd.pid").read_text())


def containerds_on(proxy: Criproxy) -> list[int]:
    """Every containerd process running on this criproxy's managed config."""
    config = str(proxy.state / "containerd" / "config.toml").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"containerd")
            and config in argv
            and pid_alive(int(entry.name))
        ):
            pids.append(int(entry.name))
    return pids


def ready(proxy: Criproxy) -> bool:
    status = proxy.runtime.Status(api_pb2.StatusRequest())
    return {c.type: c.status for c in status.status.conditions}["RuntimeReady"]


def test_managed_mode_starts_containerd_and_stops_it_on_exit(short_tmp: Path) -> None:
    proxy = managed(short_tmp)
    proxy.start()
    pid = containerd_pid(proxy)
    assert containerds_on(proxy) == [pid]
    assert ready(proxy)
    config = (proxy.state / "containerd" / "config.toml").read_text()
    assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in config
    assert f'root = "{proxy.root / "containerd"}"' in config
    assert proxy.stop() == 0
    assert not pid_alive(pid)
    assert containerds_on(proxy) == []


def test_managed_containerd_is_restarted_when_it_dies(short_tmp: Path) -> None:
    proxy = managed(short_tmp)
    proxy.start()
    try:
        first = containerd_pid(proxy)
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: containerd_pid(proxy) != first and ready(proxy),
            30,
            what="a new managed containerd",
        )
        assert containerds_on(proxy) == [containerd_pid(proxy)]
    finally:
        proxy.stop()
    assert containerds_on(proxy) == []


def test_after_kill_9_the_next_criproxy_adopts_the_running_containerd(short_tmp: Path) -> None:
    proxy = managed(short_tmp)
    proxy.start()
    pid = containerd_pid(proxy)
    proxy.kill()  # SIGKILL: no clean-up at all
    assert pid_alive(pid), "containerd must outlive a killed criproxy"
    proxy.start()
    try:
        assert containerd_pid(proxy) == pid
        assert containerds_on(proxy) == [pid]
        assert ready(proxy)
        assert any(r.get("event") == "adopting running containerd" for r in proxy.log_records())
    finally:
        proxy.stop()
    assert not pid_alive(pid)
