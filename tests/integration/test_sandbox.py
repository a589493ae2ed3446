"""Pod sandboxes over a real containerd, runc and CNI bridge network."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.pods_env import SUBNET, PodEnv, pod_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.helpers import Criproxy


def test_run_gives_a_ready_pod_with_an_ip_and_its_files(pod_env: PodEnv) -> None:
    config = pod_config(
        "web",
        dns_config=api_pb2.DNSConfig(
            servers=["10.96.0.10"], searches=["test.svc.cluster.local"], options=["ndots:5"]
        ),
    )
    pod_id = pod_env.run(config)
    status = pod_env.status(pod_id).status
    assert status.state == api_pb2.SANDBOX_READY
    assert status.metadata.name == "web"
    assert status.labels["app"] == "web"
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(SUBNET)
    assert status.created_at > 0
    info = pod_env.info(pod_id)
    pid = int(info["pid"])  # type: ignore[arg-type]
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    netns = str(info["netNamespacePath"])
    assert os.stat(netns).st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
    cni = info["cniResult"]  # containerd's shape, which scripts read
    assert cni["Interfaces"]["eth0"]["IPConfigs"][0]["IP"] == status.network.ip  # type: ignore[index]
    assert status.runtime_handler == ""  # as asked: the default
    files = Path(str(info["sandboxFiles"]))
    assert (files / "hostname").read_text() == "web\n"
    assert (files / "resolv.conf").read_text() == (
        "search test.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert f"{status.network.ip}\tweb" in (files / "hosts").read_text()
    assert status.network.ip in pod_env.allocations()
    assert [p.id for p in pod_env.list(id=pod_id)] == [pod_id]
    assert [p.id for p in pod_env.list(id=pod_id[:12])] == [pod_id]


def test_stop_and_remove_clean_up_everything_and_are_idempotent(pod_env: PodEnv) -> None:
    before_netns = pod_env.netns_files()
    pod_id = pod_env.run(pod_config("cleanup"))
    ip = pod_env.status(pod_id).status.network.ip
    assert ip in pod_env.allocations()
    pod_env.stop(pod_id)
    assert pod_env.status(pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    assert ip not in pod_env.allocations()
    assert pod_env.netns_files() == before_netns
    pod_env.stop(pod_id)  # again: fine
    pod_env.remove(pod_id)
    pod_env.remove(pod_id)
    with pytest.raises(grpc.RpcError) as info:
        pod_env.status(pod_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert pod_id not in pod_env.ctr("containers", "ls", "-q").stdout
    assert pod_id not in pod_env.ctr("snapshots", "ls").stdout
    assert not pod_env.mounts_under(pod_env.proxy.state / "sandboxes" / pod_id)
    assert not (pod_env.proxy.root / "sandboxes" / pod_id).exists()


def test_unknown_and_empty_ids(pod_env: PodEnv) -> None:
    pod_env.stop("0" * 64)  # unknown: success, as critest's Idempotence specs need
    pod_env.remove("0" * 64)
    with pytest.raises(grpc.RpcError) as info:
        pod_env.status("0" * 64)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for call, request in (
        (pod_env.proxy.runtime.StopPodSandbox, api_pb2.StopPodSandboxRequest()),
        (pod_env.proxy.runtime.RemovePodSandbox, api_pb2.RemovePodSandboxRequest()),
        (pod_env.proxy.runtime.PodSandboxStatus, api_pb2.PodSandboxStatusRequest()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata": api_pb2.PodSandboxMetadata(uid="u", namespace="n")}, "metadata.name"),
        ({"metadata": api_pb2.PodSandboxMetadata(name="a", namespace="n")}, "metadata.uid"),
        ({"log_directory": "relative/dir"}, "log_directory"),
        ({"port_mappings": [api_pb2.PortMapping(container_port=0)]}, "container_port"),
        ({"port_mappings": [api_pb2.PortMapping(container_port=80, host_port=70000)]}, "host_port"),
        ({"dns_config": api_pb2.DNSConfig(servers=["not-an-ip"])}, "dns_config.servers"),
    ],
)
def test_bad_requests_are_invalid_argument_and_leave_nothing(
    pod_env: PodEnv, change: dict[str, object], field: str
) -> None:
    before = pod_env.ctr("containers", "ls", "-q").stdout
    config = pod_config("bad")
    for key, value in change.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        elif key in ("metadata", "dns_config"):
            getattr(config, key).CopyFrom(value)
        else:
            setattr(config, key, value)
    with pytest.raises(grpc.RpcError) as info:
        pod_env.run(config)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert pod_env.ctr("containers", "ls", "-q").stdout == before


def test_bad_sysctls_and_unknown_handler(pod_env: PodEnv) -> None:
    config = pod_config("sysctl")
    config.linux.sysctls["kernel.hostname"] = "x"  # not namespaced
    with pytest.raises(grpc.RpcError) as info:
        pod_env.run(config)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        pod_env.run(pod_config("handler"), handler="kata")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata" in info.value.details()


def test_same_metadata_twice_is_already_exists_and_concurrent_requests_make_one_pod(
    pod_env: PodEnv,
) -> None:
    config = pod_config("twins")
    ids: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ids.append(pod_env.run(config))
        except grpc.RpcError as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(set(ids)) == 1, (ids, errors)
    with pytest.raises(grpc.RpcError) as info:
        pod_env.run(config)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len([p for p in pod_env.list() if p.metadata.name == "twins"]) == 1


def test_pause_process_death_marks_the_pod_notready(pod_env: PodEnv) -> None:
    pod_id = pod_env.run(pod_config("dies"))
    pid = int(pod_env.info(pod_id)["pid"])  # type: ignore[arg-type]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pod_env.status(pod_id).status.state != api_pb2.SANDBOX_NOTREADY:
        assert time.monotonic() < deadline, "the exit never reached the pod"
        time.sleep(0.05)
    pod_env.stop(pod_id)
    pod_env.remove(pod_id)


def test_host_network_pod(pod_env: PodEnv) -> None:
    config = pod_config("hostnet")
    config.linux.security_context.namespace_options.network = api_pb2.NODE
    pod_id = pod_env.run(config)
    info = pod_env.info(pod_id)
    pid = int(info["pid"])  # type: ignore[arg-type]
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    assert info["netNamespacePath"] == ""
    assert pod_env.status(pod_id).status.network.ip == ""
    pod_env.remove(pod_id)


def test_pods_reach_each_other(pod_env: PodEnv) -> None:
    import subprocess

    a = pod_env.run(pod_config("ping-a"))
    b = pod_env.run(pod_config("ping-b"))
    ip_b = pod_env.status(b).status.network.ip
    netns_a = str(pod_env.info(a)["netNamespacePath"])
    out = subprocess.run(
        ["nsenter", f"--net={netns_a}", "/bin/busybox", "ping", "-c", "1", "-W", "2", ip_b],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for pod_id in (a, b):
        pod_env.remove(pod_id)


def test_twenty_concurrent_pods_get_distinct_ips(pod_env: PodEnv) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        pod_id = pod_env.run(pod_config(f"many-{i}"))
        with lock:
            ids.append(pod_id)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(ids) == 20
    statuses = [pod_env.status(i).status for i in ids]
    assert all(s.state == api_pb2.SANDBOX_READY for s in statuses)
    assert len({s.network.ip for s in statuses}) == 20
    for pod_id in ids:
        pod_env.remove(pod_id)


def test_kill_9_restart_loses_nothing(pod_env: PodEnv) -> None:
    a = pod_env.run(pod_config("survivor"))
    b = pod_env.run(pod_config("stopped-one"))
    pod_env.stop(b)
    before = {p.id: p for p in pod_env.list()}
    before_status = {i: pod_env.status(i).status for i in (a, b)}
    pod_env.proxy.kill()
    pod_env.proxy.start()
    after = {p.id: p for p in pod_env.list()}
    assert after == before
    for pod_id in (a, b):
        assert pod_env.status(pod_id).status == before_status[pod_id]
    ip = before_status[a].network.ip
    pod_env.stop(a)
    assert ip not in pod_env.allocations()
    for pod_id in (a, b):
        pod_env.remove(pod_id)
    assert a not in pod_env.netns_files()


def test_a_failing_cni_plugin_leaves_nothing_behind(pod_env: PodEnv) -> None:
    from tests.integration.pods_env import write_pod_network

    conflist = pod_env.proxy.cni_dir / "10-pods.conflist"
    good = conflist.read_text()
    before = (
        pod_env.netns_files(),
        pod_env.ctr("containers", "ls", "-q").stdout,
        sorted(pod_env.allocations()),
    )
    write_pod_network(
        pod_env.proxy.cni_dir,
        pod_env.cni_data,
        extra=[{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}],
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            pod_env.run(pod_config("cni-fails"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "tuning" in info.value.details()
        after = (
            pod_env.netns_files(),
            pod_env.ctr("containers", "ls", "-q").stdout,
            sorted(pod_env.allocations()),
        )
        assert after == before
        assert not [p for p in pod_env.list() if p.metadata.name == "cni-fails"]
    finally:
        conflist.write_text(good)
    pod_id = pod_env.run(pod_config("cni-fails"))  # the name was released
    pod_env.remove(pod_id)


def test_missing_cni_config_is_a_clear_error(pod_env: PodEnv) -> None:
    conflist = pod_env.proxy.cni_dir / "10-pods.conflist"
    saved = conflist.read_text()
    conflist.unlink()
    try:
        with pytest.raises(grpc.RpcError) as info:
            pod_env.run(pod_config("no-cni"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(pod_env.proxy.cni_dir) in info.value.details()
        status = pod_env.proxy.runtime.Status(api_pb2.StatusRequest())
        network = {c.type: c for c in status.status.conditions}["NetworkReady"]
        assert network.status is False
    finally:
        conflist.write_text(saved)


def test_sysctls_and_pid_namespace_modes_apply(pod_env: PodEnv) -> None:
    import subprocess

    config = pod_config("sysctls")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "1000"
    pod_id = pod_env.run(config)
    netns = str(pod_env.info(pod_id)["netNamespacePath"])
    value = subprocess.run(
        ["nsenter", f"--net={netns}", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert value == "1000"
    pod_env.remove(pod_id)

    host_pid = pod_config("hostpid")
    host_pid.linux.security_context.namespace_options.pid = api_pb2.NODE
    pod_id = pod_env.run(host_pid)
    pid = int(pod_env.info(pod_id)["pid"])  # type: ignore[arg-type]
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino
    pod_env.remove(pod_id)

    own_pid = pod_config("podpid")
    own_pid.linux.security_context.namespace_options.pid = api_pb2.POD
    pod_id = pod_env.run(own_pid)
    pid = int(pod_env.info(pod_id)["pid"])  # type: ignore[arg-type]
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    pod_env.remove(pod_id)


def test_many_lifecycles_leak_nothing(pod_env: PodEnv) -> None:
    def snapshot() -> tuple[object, ...]:
        return (
            pod_env.netns_files(),
            sorted(pod_env.allocations()),
            pod_env.ctr("containers", "ls", "-q").stdout,
            len(pod_env.ctr("snapshots", "ls").stdout.splitlines()),
            # by prefix: criproxy keeps one shared set-up lease per kind, renewed as it ages
            sorted(
                lease.rsplit("-", 1)[0]
                for lease in pod_env.ctr("leases", "ls", "-q").stdout.split()
            ),
            pod_env.mounts_under(pod_env.proxy.state, pod_env.proxy.root),
        )

    warm = pod_env.run(pod_config("cycle-warm"))  # the shared set-up lease exists from here
    pod_env.stop(warm)
    pod_env.remove(warm)
    before = snapshot()
    for i in range(200):
        pod_id = pod_env.run(pod_config(f"cycle-{i}"))
        pod_env.stop(pod_id)
        pod_env.remove(pod_id)
    assert snapshot() == before


def test_unpullable_pause_image_fails_cleanly(
    short_tmp: Path,
    pod_env: PodEnv,
    registry_http,  # type: ignore[no-untyped-def]
) -> None:
    from tests.integration.helpers import Criproxy

    proxy = Criproxy(
        short_tmp / "cpx",
        containerd=pod_env.containerd.socket,
        config={
            "sandbox_image": registry_http.reference("test/no-such-pause", "1"),
            "registry": {"config_path": str(pod_env.proxy.base.parent / "certs.d")},
        },
    )
    proxy.cni_dir.mkdir(parents=True)
    (proxy.cni_dir / "10-pods.conflist").write_text(
        (pod_env.proxy.cni_dir / "10-pods.conflist").read_text()
    )
    proxy.start()
    try:
        before = pod_env.ctr("containers", "ls", "-q").stdout
        with pytest.raises(grpc.RpcError) as info:
            proxy.runtime.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=pod_config("no-pause")), timeout=60
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "sandbox image" in info.value.details()
        assert pod_env.ctr("containers", "ls", "-q").stdout == before
        netns_dir = proxy.state / "netns"
        assert not netns_dir.exists() or not os.listdir(netns_dir)
    finally:
        proxy.stop()


SLOW_DEL = """#!/usr/bin/env python3
import json, os, sys, time
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND")
if command == "ADD":
    json.dump(conf["prevResult"], sys.stdout)
elif command == "DEL":
    open(conf["marker"], "w").close()
    time.sleep(conf["seconds"])
    try:
        os.unlink(conf["marker"])
    except FileNotFoundError:  # a DEL run again after a kill -9 shares it
        pass
elif command == "VERSION":
    json.dump({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}, sys.stdout)
"""


@contextlib.contextmanager
def _slow_del_pod(
    short_tmp: Path, pod_env: PodEnv, name: str
) -> Iterator[tuple[Criproxy, Path, str]]:
    """A pod of a criproxy on pod_env's containerd and network whose chain ends with a
    plugin that takes 4 s over DEL (a marker file exists meanwhile)."""
    from tests.integration.helpers import CNI_BIN_DIRS, Criproxy
    from tests.integration.pods_env import write_pod_network

    bin_dir = short_tmp / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "slowdel").write_text(SLOW_DEL)
    (bin_dir / "slowdel").chmod(0o755)
    marker = short_tmp / "deleting"
    proxy = Criproxy(short_tmp / "cpx", containerd=pod_env.containerd.socket)
    proxy.config = {
        **pod_env.proxy.config,
        "cni": {"conf_dir": str(proxy.cni_dir), "bin_dirs": [str(bin_dir), *CNI_BIN_DIRS]},
    }
    write_pod_network(
        proxy.cni_dir,
        pod_env.cni_data,
        extra=[{"type": "slowdel", "marker": str(marker), "seconds": 4}],
    )
    proxy.start()
    try:
        pod_id = proxy.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config(name)), timeout=60
        ).pod_sandbox_id
        yield proxy, marker, pod_id
    finally:
        proxy.stop()


def _stopping(proxy: Criproxy, marker: Path, pod_id: str) -> threading.Thread:
    """StopPodSandbox in a thread, once the pod is NOTREADY while its CNI DEL runs."""

    def stop() -> None:
        with contextlib.suppress(grpc.RpcError):  # a kill -9 may cut it short
            proxy.runtime.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
            )

    stopper = threading.Thread(target=stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while not (marker.exists() and _pod_state(proxy, pod_id) == api_pb2.SANDBOX_NOTREADY):
        assert time.monotonic() < deadline, "not NOTREADY while CNI DEL ran"
        time.sleep(0.05)
    return stopper


def _pod_state(proxy: Criproxy, pod_id: str) -> int:
    request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    return proxy.runtime.PodSandboxStatus(request).status.state  # type: ignore[no-any-return]


def test_a_stopping_pod_is_notready_once_its_pause_exits_while_its_network_goes(
    short_tmp: Path, pod_env: PodEnv
) -> None:
    with _slow_del_pod(short_tmp, pod_env, "slow-del") as (proxy, marker, pod_id):
        verbose = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        pid = json.loads(proxy.runtime.PodSandboxStatus(verbose).info["info"])["pid"]
        stopper = _stopping(proxy, marker, pod_id)
        assert marker.exists() and stopper.is_alive()  # the network is still going
        assert not Path(f"/proc/{pid}").exists()  # and the pause process is gone
        ready = api_pb2.PodSandboxFilter(
            state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
        )
        listed = proxy.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=ready)).items
        assert pod_id not in [p.id for p in listed]
        stopper.join(30)
        assert not stopper.is_alive() and not marker.exists()
        assert _pod_state(proxy, pod_id) == api_pb2.SANDBOX_NOTREADY
        assert not (proxy.state / "netns" / pod_id).exists()
        proxy.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_killed_while_a_pods_network_goes_the_pod_stays_notready_and_its_ip_is_released(
    short_tmp: Path, pod_env: PodEnv
) -> None:
    with _slow_del_pod(short_tmp, pod_env, "slow-del-9") as (proxy, marker, pod_id):
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        ip = proxy.runtime.PodSandboxStatus(request).status.network.ip
        assert ip in pod_env.allocations()
        stopper = _stopping(proxy, marker, pod_id)
        proxy.signal(signal.SIGKILL)
        assert proxy.proc is not None
        proxy.proc.wait(10)
        stopper.join(30)
        proxy.start()
        assert _pod_state(proxy, pod_id) == api_pb2.SANDBOX_NOTREADY
        # the removal runs CNI DEL again: the IP the killed DEL may not have released goes
        proxy.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
        )
        assert ip not in pod_env.allocations()
        assert not (proxy.state / "netns" / pod_id).exists()


def test_update_pod_sandbox_resources_is_recorded_and_survives_a_restart(pod_env: PodEnv) -> None:
    pod_id = pod_env.run(pod_config("resized"))
    request = api_pb2.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod_id,
        resources=api_pb2.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=1 << 28),
        overhead=api_pb2.LinuxContainerResources(cpu_shares=10),
    )
    pod_env.proxy.runtime.UpdatePodSandboxResources(request)
    pod_env.proxy.kill()
    pod_env.proxy.start()
    info = pod_env.info(pod_id)
    assert info["resources"] == {"cpu_shares": "512", "memory_limit_in_bytes": "268435456"}
    assert info["overhead"] == {"cpu_shares": "10"}
    with pytest.raises(grpc.RpcError) as info:
        pod_env.proxy.runtime.UpdatePodSandboxResources(
            api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id="0" * 64)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    pod_env.remove(pod_id)


def test_update_pod_sandbox_resources_applies_them_to_the_pod_cgroup(pod_env: PodEnv) -> None:
    parent = f"/cpx-resize-{os.getpid()}"
    config = pod_config("resized-cgroup")
    config.linux.cgroup_parent = parent
    pod_id = pod_env.run(config)
    cgroup = Path("/sys/fs/cgroup")
    try:
        pod_env.proxy.runtime.UpdatePodSandboxResources(
            api_pb2.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod_id,
                resources=api_pb2.LinuxContainerResources(
                    cpu_shares=512,
                    cpu_quota=50000,
                    cpu_period=100000,
                    memory_limit_in_bytes=1 << 28,
                ),
            )
        )
        pod_dir = parent.strip("/")
        assert (cgroup / "memory" / pod_dir / "memory.limit_in_bytes").read_text() == f"{1 << 28}\n"
        assert (cgroup / "cpu" / pod_dir / "cpu.shares").read_text() == "512\n"
        assert (cgroup / "cpu" / pod_dir / "cpu.cfs_quota_us").read_text() == "50000\n"
    finally:
        pod_env.remove(pod_id)
        for controller in cgroup.iterdir():
            with contextlib.suppress(OSError):
                (controller / parent.strip("/")).rmdir()


def test_concurrent_removes_all_succeed(pod_env: PodEnv) -> None:
    pod_id = pod_env.run(pod_config("removed-thrice"))
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            pod_env.remove(pod_id)
        except grpc.RpcError as err:
            errors.append(err)

    threads = [threading.Thread(target=remove) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert pod_id not in [p.id for p in pod_env.list()]


def test_drift_while_containerd_was_away_is_repaired_on_reconnect(pod_env: PodEnv) -> None:
    alive = pod_env.run(pod_config("drift-alive"))
    doomed = pod_env.run(pod_config("drift-doomed"))
    pid = int(pod_env.info(doomed)["pid"])  # type: ignore[arg-type]
    pod_env.containerd.stop()  # shims and pods keep running
    os.kill(pid, signal.SIGKILL)  # no event can reach criproxy now
    time.sleep(0.5)
    pod_env.containerd.start()
    deadline = time.monotonic() + 20
    while pod_env.status(doomed).status.state != api_pb2.SANDBOX_NOTREADY:
        assert time.monotonic() < deadline, "the exit during the outage was never noticed"
        time.sleep(0.1)
    assert pod_env.status(alive).status.state == api_pb2.SANDBOX_READY
    for pod_id in (alive, doomed):
        pod_env.remove(pod_id)
