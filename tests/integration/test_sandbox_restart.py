"""A slow CNI chain: List/Status stay fast meanwhile, and a kill -9 in the middle of
RunPodSandbox leaves nothing that a restart cannot clean up."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import Criproxy
from tests.integration.pods_env import PodEnv, pod_config

SLOW_SECONDS = 3
SLOW_PLUGIN = f"""#!/usr/bin/env python3
# Passes the previous result on; ADD takes {SLOW_SECONDS} s, like a CNI plugin that hangs.
import json, os, sys, time
config = json.load(sys.stdin)
if os.environ.get("CNI_COMMAND") == "ADD":
    time.sleep({SLOW_SECONDS})
    print(json.dumps(config.get("prevResult") or {{"cniVersion": config["cniVersion"]}}))
"""


@pytest.fixture
def slow_proxy(short_tmp: Path, pod_env: PodEnv) -> Iterator[Criproxy]:
    """A criproxy of its own on the pods' containerd whose CNI chain ends in a slow plugin."""
    bin_dir = short_tmp / "cni-bin"
    bin_dir.mkdir()
    plugin = bin_dir / "slowpass"
    plugin.write_text(SLOW_PLUGIN)
    plugin.chmod(0o755)
    proxy = Criproxy(
        short_tmp / "cpx",
        containerd=pod_env.containerd.socket,
        config={
            **pod_env.proxy.config,
            "cni": {
                "conf_dir": str(short_tmp / "net.d"),
                "bin_dirs": [str(bin_dir), "/usr/lib/cni"],
            },
        },
    )
    conflist = json.loads((pod_env.proxy.cni_dir / "10-pods.conflist").read_text())
    conflist["plugins"].append({"type": "slowpass"})
    (short_tmp / "net.d").mkdir()
    (short_tmp / "net.d" / "10-pods.conflist").write_text(json.dumps(conflist))
    proxy.start()
    yield proxy
    proxy.stop()
    shutil.rmtree(short_tmp / "cpx", ignore_errors=True)


def _run_in_thread(
    proxy: Criproxy, name: str, results: list[object], *, sysctls: dict[str, str] | None = None
) -> threading.Thread:
    config = pod_config(name)
    config.linux.sysctls.update(sysctls or {})

    def run() -> None:
        try:
            results.append(
                proxy.runtime.RunPodSandbox(
                    api_pb2.RunPodSandboxRequest(config=config), timeout=60
                ).pod_sandbox_id
            )
        except grpc.RpcError as err:
            results.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_list_and_status_do_not_wait_for_a_slow_cni_add(slow_proxy: Criproxy) -> None:
    first: list[object] = []
    _run_in_thread(slow_proxy, "slow-first", first).join(60)
    ready_id = first[0]
    assert isinstance(ready_id, str), first
    results: list[object] = []
    thread = _run_in_thread(slow_proxy, "slow-second", results)
    time.sleep(0.5)  # the second pod is now inside its slow CNI ADD
    started = time.monotonic()
    pods = slow_proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    status = slow_proxy.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=ready_id)
    )
    assert time.monotonic() - started < 0.5
    assert thread.is_alive(), "the second RunPodSandbox should still be in its CNI ADD"
    assert [p.id for p in pods] == [ready_id]
    assert status.status.state == api_pb2.SANDBOX_READY
    thread.join(60)
    for pod_id in (ready_id, results[0]):
        slow_proxy.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=str(pod_id)), timeout=60
        )


def test_kill_9_during_run_pod_sandbox_leaves_nothing(
    slow_proxy: Criproxy, pod_env: PodEnv
) -> None:
    allocations_before = sorted(pod_env.allocations())
    containers_before = pod_env.ctr("containers", "ls", "-q").stdout
    results: list[object] = []
    thread = _run_in_thread(slow_proxy, "half-made", results)
    time.sleep(1.0)  # CNI ADD has allocated the IP and is now in the slow plugin
    assert len(pod_env.allocations()) == len(allocations_before) + 1
    slow_proxy.kill()
    thread.join(30)
    slow_proxy.start()
    netns_dir = slow_proxy.state / "netns"
    pods = slow_proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    for pod in pods:  # either listed NOTREADY (and removable) or already cleaned up
        assert pod.state == api_pb2.SANDBOX_NOTREADY
        slow_proxy.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
        )
    assert sorted(pod_env.allocations()) == allocations_before
    assert pod_env.ctr("containers", "ls", "-q").stdout == containers_before
    assert not netns_dir.exists() or os.listdir(netns_dir) == []
    sandbox_dirs = slow_proxy.state / "sandboxes"
    assert not sandbox_dirs.exists() or os.listdir(sandbox_dirs) == []


def test_kill_9_before_the_pause_record_exists_leaves_nothing(
    slow_proxy: Criproxy, pod_env: PodEnv
) -> None:
    """A sysctl naming eth0 makes CNI run before the pause container is created: killed
    during that ADD, criproxy leaves a netns and an IP but no record to find them by."""
    allocations_before = sorted(pod_env.allocations())
    containers_before = pod_env.ctr("containers", "ls", "-q").stdout
    results: list[object] = []
    sysctls = {"net.ipv4.conf.eth0.forwarding": "1"}
    thread = _run_in_thread(slow_proxy, "no-record", results, sysctls=sysctls)
    time.sleep(1.0)
    assert len(pod_env.allocations()) == len(allocations_before) + 1
    assert pod_env.ctr("containers", "ls", "-q").stdout == containers_before  # no record yet
    slow_proxy.kill()
    thread.join(30)
    slow_proxy.start()
    assert [
        p for p in slow_proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    ] == []
    assert sorted(pod_env.allocations()) == allocations_before
    netns_dir = slow_proxy.state / "netns"
    assert not netns_dir.exists() or os.listdir(netns_dir) == []
    sandbox_dirs = slow_proxy.state / "sandboxes"
    assert not sandbox_dirs.exists() or os.listdir(sandbox_dirs) == []


def _active_snapshots(pod_env: PodEnv) -> int:
    return sum(" Active" in line for line in pod_env.ctr("snapshots", "ls").stdout.splitlines())


def _leases_of(pod_env: PodEnv, pid: int) -> list[str]:
    """The leases whose owner label names process `pid` (`<boot>/<pid>/<start>`)."""
    lines = pod_env.ctr("leases", "ls").stdout.splitlines()[1:]
    return [
        line.split()[0]
        for line in lines
        if "io.criproxy.owner=" in line
        and f"/{pid}/" in line.split("io.criproxy.owner=", 1)[1].split(",", 1)[0]
    ]


def test_kill_9_during_ten_run_pod_sandboxes_frees_their_leases_and_snapshots(
    slow_proxy: Criproxy, pod_env: PodEnv
) -> None:
    active_before = _active_snapshots(pod_env)
    results: list[object] = []
    threads = [_run_in_thread(slow_proxy, f"leased-{i}", results) for i in range(10)]
    time.sleep(1.5)  # every set-up is inside its slow CNI ADD, under its lease
    assert slow_proxy.proc is not None
    held = _leases_of(pod_env, slow_proxy.proc.pid)
    assert len(held) == 1, held  # one set-up lease, shared by the ten
    assert _active_snapshots(pod_env) >= active_before + 10  # what it holds
    slow_proxy.kill()
    for thread in threads:
        thread.join(30)
    slow_proxy.start()  # recovery has run when it answers
    pods = slow_proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    try:
        assert [
            lease for lease in pod_env.ctr("leases", "ls", "-q").stdout.split() if lease in held
        ] == []
        assert {pod.state for pod in pods} <= {api_pb2.SANDBOX_NOTREADY}
    finally:
        for pod in pods:
            slow_proxy.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
            )
    assert _active_snapshots(pod_env) == active_before
