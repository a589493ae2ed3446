"""criproxy serving CRI on a unix socket over a real containerd."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from criproxy import __version__
from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import (
    REPO,
    ContainerdProcess,
    Criproxy,
    wait_until,
    write_bridge_conflist,
)

IMPLEMENTED = {
    "RuntimeService": {
        "Version",
        "Status",
        "RuntimeConfig",
        "UpdateRuntimeConfig",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "ListPodSandbox",
        "StreamPodSandboxes",
        "UpdatePodSandboxResources",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ContainerStatus",
        "ListContainers",
        "StreamContainers",
        "UpdateContainerResources",
        "ReopenContainerLog",
        "CheckpointContainer",
        "CheckpointPod",
        "RestorePod",
        "ExecSync",
        "Exec",
        "Attach",
        "PortForward",
        "GetContainerEvents",
        "ContainerStats",
        "ListContainerStats",
        "StreamContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "StreamPodSandboxStats",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "StreamPodSandboxMetrics",
    },
    "ImageService": {
        "PullImage",
        "ImageStatus",
        "ListImages",
        "StreamImages",
        "RemoveImage",
        "ImageFsInfo",
    },
}


def conditions(resp: api_pb2.StatusResponse) -> dict[str, api_pb2.RuntimeCondition]:
    return {c.type: c for c in resp.status.conditions}


def test_version_names_criproxy_and_api_v1(criproxy: Criproxy) -> None:
    resp = criproxy.runtime.Version(api_pb2.VersionRequest(version="0.1.0"))
    assert resp.version == "0.1.0"
    assert resp.runtime_name == "criproxy"
    assert resp.runtime_version == __version__
    assert resp.runtime_api_version == "v1"


def test_status_is_ready_with_containerd_and_cni_config(criproxy: Criproxy) -> None:
    resp = criproxy.runtime.Status(api_pb2.StatusRequest())
    conds = conditions(resp)
    assert conds["RuntimeReady"].status is True
    assert conds["NetworkReady"].status is True
    assert not resp.info, "info is only given with verbose"
    names = [h.name for h in resp.runtime_handlers]
    assert names[0] == "" and {"runc", "crun"} <= set(names)


def test_status_network_not_ready_without_cni_config(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(short_tmp / "cpx", containerd=shared_containerd.socket)
    proxy.start()
    try:
        conds = conditions(proxy.runtime.Status(api_pb2.StatusRequest()))
        assert conds["RuntimeReady"].status is True
        network = conds["NetworkReady"]
        assert network.status is False
        assert network.reason == "NetworkPluginNotReady"
        assert str(proxy.cni_dir) in network.message
        # The config appears later: readiness follows without a restart.
        write_bridge_conflist(proxy.cni_dir)
        conds = conditions(proxy.runtime.Status(api_pb2.StatusRequest()))
        assert conds["NetworkReady"].status is True
    finally:
        proxy.stop()


def test_status_verbose_info_has_effective_config(criproxy: Criproxy) -> None:
    resp = criproxy.runtime.Status(api_pb2.StatusRequest(verbose=True))
    config = json.loads(resp.info["config"])
    assert config["listen"] == str(criproxy.socket)
    assert config["cni"]["conf_dir"] == str(criproxy.cni_dir)
    assert config["containerd"]["address"] == str(criproxy.containerd)
    containerd = json.loads(resp.info["containerd"])
    assert containerd["version"].startswith(("1.", "v1.", "2.", "v2."))
    assert json.loads(resp.info["cniconfig"])["config"]["name"] == "criproxy-test"


def test_runtime_config_reports_configured_cgroup_driver(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(
        short_tmp / "cpx", containerd=shared_containerd.socket, config={"cgroup_driver": "systemd"}
    )
    proxy.start()
    try:
        resp = proxy.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
        assert resp.linux.cgroup_driver == api_pb2.SYSTEMD
    finally:
        proxy.stop()


def test_runtime_config_default_is_cgroupfs(criproxy: Criproxy) -> None:
    resp = criproxy.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert resp.linux.cgroup_driver == api_pb2.CGROUPFS


def test_update_runtime_config_keeps_pod_cidr_across_restart(criproxy: Criproxy) -> None:
    request = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(
            network_config=api_pb2.NetworkConfig(pod_cidr="10.244.3.0/24")
        )
    )
    criproxy.runtime.UpdateRuntimeConfig(request)
    info = criproxy.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    assert json.loads(info["podCIDR"]) == "10.244.3.0/24"
    criproxy.kill()
    criproxy.start()
    info = criproxy.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    assert json.loads(info["podCIDR"]) == "10.244.3.0/24"


def test_status_follows_containerd_down_and_back(
    short_tmp: Path, containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(short_tmp / "cpx", containerd=containerd.socket)
    write_bridge_conflist(proxy.cni_dir)
    proxy.start()
    try:
        assert conditions(proxy.runtime.Status(api_pb2.StatusRequest()))["RuntimeReady"].status
        containerd.stop()
        runtime = conditions(proxy.runtime.Status(api_pb2.StatusRequest()))["RuntimeReady"]
        assert runtime.status is False
        assert runtime.reason == "ContainerdUnreachable"
        assert str(containerd.socket) in runtime.message
        # Calls keep working while containerd is gone.
        assert proxy.runtime.Version(api_pb2.VersionRequest()).runtime_name == "criproxy"
        containerd.start()
        wait_until(
            lambda: (
                conditions(proxy.runtime.Status(api_pb2.StatusRequest()))["RuntimeReady"].status
            ),
            timeout=10,
            what="RuntimeReady after containerd restart",
        )
        assert proxy.proc is not None and proxy.proc.poll() is None
    finally:
        proxy.stop()


def test_socket_is_0660_and_stale_socket_is_replaced(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(short_tmp / "cpx", containerd=shared_containerd.socket)
    proxy.base.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(proxy.socket))  # a socket file nobody listens on
    stale.close()
    proxy.start()
    try:
        mode = os.stat(proxy.socket).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        proxy.runtime.Version(api_pb2.VersionRequest())
    finally:
        proxy.stop()


def test_parent_dir_of_socket_is_created(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(short_tmp / "cpx", containerd=shared_containerd.socket)
    listen = short_tmp / "new" / "dir" / "c.sock"
    proxy.extra_args = ["--listen", str(listen)]
    proxy.start(wait=False)
    try:
        wait_until(listen.exists, 30, what="socket in a new dir")
    finally:
        proxy.stop()


def test_refuses_to_take_over_a_live_socket(criproxy: Criproxy, short_tmp: Path) -> None:
    second = Criproxy(short_tmp / "second", containerd=criproxy.containerd)
    second.extra_args = ["--listen", str(criproxy.socket)]
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert "already serving" in second.tail()
    criproxy.runtime.Version(api_pb2.VersionRequest())  # the first one is untouched


def _all_methods() -> list[tuple[str, str, bool]]:
    out = []
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            out.append((service.name, method.name, method.server_streaming))
    return out


def test_service_declares_43_rpcs() -> None:
    methods = _all_methods()
    assert len([m for m in methods if m[0] == "RuntimeService"]) == 37
    assert len([m for m in methods if m[0] == "ImageService"]) == 6


def test_every_rpc_is_served_by_the_servicers() -> None:
    """No rpc of CRI 1.37 falls to the UNIMPLEMENTED answer (which the handler unit tests
    cover for an rpc a servicer lacks)."""
    from criproxy.cri import ImageServicer, RuntimeServicer

    servicers = {"RuntimeService": RuntimeServicer, "ImageService": ImageServicer}
    served = {(s, n) for s, n, _ in _all_methods() if callable(getattr(servicers[s], n, None))}
    assert served == {(s, n) for s, n, _ in _all_methods()}
    assert served == {(s, n) for s, names in IMPLEMENTED.items() for n in names}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(
    short_tmp: Path, shared_containerd: ContainerdProcess, signum: int
) -> None:
    proxy = Criproxy(short_tmp / "cpx", containerd=shared_containerd.socket)
    proxy.start()
    proxy.signal(signum)
    assert proxy.proc is not None
    assert proxy.proc.wait(30) == 0
    assert not proxy.socket.exists()
    assert any(r.get("event") == "stopped" for r in proxy.log_records())
    assert containerd_still_serving(shared_containerd)


def containerd_still_serving(ctd: ContainerdProcess) -> bool:
    return ctd.proc is not None and ctd.proc.poll() is None


def test_one_log_line_per_call_with_method_duration_and_code(criproxy: Criproxy) -> None:
    criproxy.runtime.Version(api_pb2.VersionRequest())  # a polling call: debug only
    criproxy.runtime.UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest())
    with pytest.raises(grpc.RpcError):
        criproxy.runtime.RestorePod(api_pb2.RestorePodRequest())

    def calls() -> list[dict[str, object]]:
        return [r for r in criproxy.log_records() if r.get("event") == "cri call"]

    wait_until(lambda: any(r["method"] == "RestorePod" for r in calls()), 10)
    by_method = {r["method"]: r for r in calls()}
    assert by_method["UpdateRuntimeConfig"]["code"] == "OK"
    assert isinstance(by_method["UpdateRuntimeConfig"]["duration_ms"], float)
    assert by_method["RestorePod"]["code"] == "INVALID_ARGUMENT"
    assert by_method["RestorePod"]["error"] == "config is required"
    assert "Version" not in by_method  # the node's log at info is its changes


def _metrics_address(proxy: Criproxy) -> str:
    """The endpoint's bound address, from criproxy's `serving` log line."""
    (serving,) = [r for r in proxy.log_records() if r.get("event") == "serving"][-1:]
    return str(serving["metrics"])


def test_metrics_endpoint_counts_calls_by_code(
    short_tmp: Path, shared_containerd: ContainerdProcess
) -> None:
    proxy = Criproxy(
        short_tmp / "cpx",
        containerd=shared_containerd.socket,
        config={"metrics": {"address": "127.0.0.1:0"}},
    )
    proxy.start()
    try:
        proxy.runtime.Version(api_pb2.VersionRequest())
        with pytest.raises(grpc.RpcError):
            proxy.runtime.RestorePod(api_pb2.RestorePodRequest())
        address = _metrics_address(proxy)
        body = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read()
        text = body.decode()
        assert 'criproxy_cri_requests_total{code="OK",method="Version"}' in text
        refused = 'code="INVALID_ARGUMENT",method="RestorePod"'
        assert f"criproxy_cri_requests_total{{{refused}}}" in text
        assert 'criproxy_cri_request_duration_seconds_count{method="Version"}' in text
        assert (
            'criproxy_containerd_request_duration_seconds_count{method="Version",service="Version"}'
            in text
        )
        assert "criproxy_process_resident_memory_bytes " in text
        assert 'criproxy_pod_sandboxes{state="ready"} 0.0' in text
    finally:
        proxy.stop()


def test_healthz_follows_containerd(short_tmp: Path, containerd: ContainerdProcess) -> None:
    proxy = Criproxy(
        short_tmp / "cpx",
        containerd=containerd.socket,
        config={"metrics": {"address": "127.0.0.1:0"}},
    )
    proxy.start()
    try:
        url = f"http://{_metrics_address(proxy)}"
        wait_until(lambda: _get(f"{url}/healthz") == (200, "ok\n"), 15, what="healthz ok")
        assert "criproxy_containerd_up 1.0" in _get(f"{url}/metrics")[1]
        containerd.stop()
        wait_until(lambda: _get(f"{url}/healthz")[0] == 503, 20, what="healthz to fail")
        assert "containerd does not answer" in _get(f"{url}/healthz")[1]
        assert "criproxy_containerd_up 0.0" in _get(f"{url}/metrics")[1]
        containerd.start()
        wait_until(lambda: _get(f"{url}/healthz")[0] == 200, 20, what="healthz back")
    finally:
        proxy.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('cgroup_driver = "sysd"\n', "'cgroup_driver': invalid value 'sysd'"),
        ("[containerd]\nadress = '/x'\n", "unknown config key 'containerd.adress'"),
        ("max_container_log_line_size = 'big'\n", "'max_container_log_line_size'"),
        ("root = [\n", "not valid TOML"),
    ],
)
def test_config_error_stops_start_naming_key_and_value(
    short_tmp: Path, content: str, expected: str
) -> None:
    config = short_tmp / "bad.toml"
    config.write_text(content)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "criproxy",
            "serve",
            "--config",
            str(config),
            "--listen",
            str(short_tmp / "c.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert str(config) in result.stderr
    assert not (short_tmp / "c.sock").exists()


def test_missing_config_file_is_an_error(short_tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "criproxy", "serve", "--config", str(short_tmp / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_call_in_flight_finishes_during_graceful_shutdown(
    short_tmp: Path, containerd: ContainerdProcess
) -> None:
    """A Status call waiting on a frozen containerd still gets its answer after SIGTERM."""
    proxy = Criproxy(short_tmp / "cpx", containerd=containerd.socket)
    proxy.start()
    assert conditions(proxy.runtime.Status(api_pb2.StatusRequest()))["RuntimeReady"].status
    assert containerd.proc is not None
    os.kill(containerd.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        future = proxy.runtime.Status.future(api_pb2.StatusRequest(), timeout=30)
        time.sleep(0.5)  # the frozen containerd holds Status for its 2 s ping timeout
        assert not future.done(), "Status must still be in flight when SIGTERM arrives"
        proxy.signal(signal.SIGTERM)
        resp = future.result()  # raises if the call was cut off
        runtime = conditions(resp)["RuntimeReady"]
        assert runtime.status is False
        assert proxy.proc is not None
        assert proxy.proc.wait(30) == 0
    finally:
        os.kill(containerd.proc.pid, signal.SIGCONT)


def test_managed_start_failure_exits_cleanly(short_tmp: Path) -> None:
    proxy = Criproxy(short_tmp / "cpx", config={"containerd": {"binary": "/nonexistent/ctd"}})
    proxy.start(wait=False)
    assert proxy.proc is not None
    assert proxy.proc.wait(60) == 1
    assert "cannot start the managed containerd" in proxy.tail()
    assert "/nonexistent/ctd" in proxy.tail()
    assert "Traceback" not in proxy.tail()
    assert not proxy.socket.exists()
