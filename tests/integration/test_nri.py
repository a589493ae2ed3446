"""NRI over a real containerd and runc: plugins connect to criproxy's NRI socket, are
synchronised with what exists, see each lifecycle event in order, adjust containers
before containerd sees them, and veto; a plugin that stalls or goes never stalls a call."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy._generated.nri import api_pb2 as nri
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import pid_alive, wait_until
from tests.support.nri_plugin import TestPlugin, refuse


class Plugins:
    """Plugins a test starts, all stopped when it ends."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.started: list[TestPlugin] = []

    def start(self, name: str, index: str = "10", **kwargs: object) -> TestPlugin:
        plugin = TestPlugin(self.socket, name, index, **kwargs)  # type: ignore[arg-type]
        self.started.append(plugin)
        return plugin.start()

    def stop_all(self) -> None:
        for plugin in self.started:
            plugin.stop()


@pytest.fixture
def plugins(ctr_env: ContainerEnv) -> Iterator[Plugins]:
    started = Plugins(ctr_env.pods.proxy.base / "nri.sock")
    yield started
    started.stop_all()
    # criproxy drops each: no later test's calls reach a plugin of this one
    wait_until(lambda: not _connected(ctr_env), 10, what="plugins to be dropped")


def _connected(env: ContainerEnv) -> list[str]:
    """Plugins criproxy says are connected (its log, since the module's start)."""
    live: list[str] = []
    for record in env.pods.proxy.log_records():
        plugin = str(record.get("plugin", ""))
        if record.get("event") == "NRI socket listening":  # a new criproxy process
            live = []
        elif record.get("event") == "NRI plugin connected and synchronised":
            live.append(plugin)
        elif record.get("event") == "NRI plugin dropped" and plugin in live:
            live.remove(plugin)
    return live


def _remove_pod(env: ContainerEnv, pod_id: str) -> None:
    """Stop the pod (its containers with it) and remove it."""
    env.pods.stop(pod_id)
    env.pods.remove(pod_id)


def _spec(env: ContainerEnv, container_id: str) -> dict[str, object]:
    info = env.pods.ctr("containers", "info", container_id).stdout
    return json.loads(info)["Spec"]  # type: ignore[no-any-return]


def test_a_plugin_is_synchronised_with_what_exists_and_sees_each_event_in_order(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    old_pod, old_config = ctr_env.pod("nri-existing")
    old = ctr_env.run(old_pod, old_config, "old", args=["sleep 1000"])

    plugin = plugins.start("observer")

    assert plugin.synced is not None
    synced_pods = {p.id: p for p in plugin.synced.pods}
    assert synced_pods[old_pod].name == "nri-existing"
    assert synced_pods[old_pod].namespace == old_config.metadata.namespace
    assert synced_pods[old_pod].ips, "a running pod's IP is in the snapshot"
    synced = {c.id: c for c in plugin.synced.containers}
    assert synced[old].name == "old"
    assert synced[old].pod_sandbox_id == old_pod
    assert synced[old].state == nri.CONTAINER_RUNNING
    assert synced[old].pid > 0

    pod_id, config = ctr_env.pod("nri-events")
    container = ctr_env.run(pod_id, config, "worker", args=["sleep 1000"])
    ctr_env.stop(container, timeout=1)
    ctr_env.remove(container)
    _remove_pod(ctr_env, pod_id)

    assert plugin.events_of(container) == [
        "CreateContainer",
        "ValidateContainerAdjustment",  # subscribed to every event: a validator too
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
        "StopContainer",
        "RemoveContainer",
    ]
    pod_events = [s.event for s in plugin.seen if s.pod == pod_id and not s.container]
    assert pod_events == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
    order = [s.event for s in plugin.seen if s.pod == pod_id]
    assert order.index("RunPodSandbox") < order.index("CreateContainer")
    assert order.index("StopContainer") < order.index("StopPodSandbox")
    created = next(s.message for s in plugin.seen if s.event == "CreateContainer")
    assert created.container.name == "worker"
    assert created.pod.name == "nri-events"
    assert created.container.args[-1] == "sleep 1000"
    started = next(s.message for s in plugin.seen if s.event == "PostStartContainer")
    assert started.container.pid > 0
    assert started.container.state == nri.CONTAINER_RUNNING
    assert old not in {s.container for s in plugin.seen}, "the old container had no event"
    ctr_env.stop(old, timeout=1)
    _remove_pod(ctr_env, old_pod)


def test_a_refused_run_pod_sandbox_fails_the_call_leaves_nothing_and_a_retry_works(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    refusing = {"RunPodSandbox": refuse("pods are closed today")}
    plugin = plugins.start("gate", answers=refusing)

    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.pod("nri-vetoed")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-gate" in caught.value.details()
    assert "pods are closed today" in caught.value.details()
    assert not [p for p in ctr_env.pods.list() if p.metadata.name == "nri-vetoed"]
    vetoed = next(s.pod for s in plugin.seen if s.event == "RunPodSandbox")
    assert vetoed not in {c.pod_sandbox_id for c in _all_containers(ctr_env)}
    assert not [n for n in ctr_env.pods.netns_files() if vetoed in n]

    plugin.answers.clear()
    pod_id, _ = ctr_env.pod("nri-vetoed")
    assert ctr_env.pods.status(pod_id).status.state == api_pb2.SANDBOX_READY
    _remove_pod(ctr_env, pod_id)


def _all_containers(env: ContainerEnv) -> list[api_pb2.Container]:
    return list(env.runtime.ListContainers(api_pb2.ListContainersRequest()).containers)


def test_create_container_adjustments_reach_the_container_in_index_order(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    def first(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        adjust = nri.ContainerAdjustment(
            annotations={"example.com/first": "yes"},
            env=[nri.KeyValue(key="FROM_NRI", value="first"), nri.KeyValue(key="-OVERRIDE")],
            rlimits=[nri.POSIXRlimit(type="RLIMIT_NOFILE", hard=4321, soft=1234)],
        )
        return nri.CreateContainerResponse(adjust=adjust)

    def second(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        # it sees the first plugin's work; it may overwrite what that one removed
        env = dict(e.split("=", 1) for e in request.container.env)
        adjust = nri.ContainerAdjustment(
            env=[
                nri.KeyValue(key="SAW_FIRST", value=env.get("FROM_NRI", "no")),
                nri.KeyValue(key="OVERRIDE", value="second"),
            ],
            annotations={"example.com/second": request.container.annotations["example.com/first"]},
        )
        return nri.CreateContainerResponse(adjust=adjust)

    plugins.start("second", "20", answers={"CreateContainer": second})
    plugins.start("first", "10", answers={"CreateContainer": first})

    pod_id, config = ctr_env.pod("nri-adjust")
    container = ctr_env.run(
        pod_id, config, "adjusted", args=["cat /proc/self/limits; exec sleep 1000"]
    )

    env = ctr_env.exec(container, "env").stdout.decode().splitlines()
    assert "FROM_NRI=first" in env
    assert "SAW_FIRST=first" in env
    assert "OVERRIDE=second" in env
    assert "FROM_IMAGE=image" in env
    wait_until(lambda: "Max open files" in ctr_env.output(container), 10, what="the limits")
    limits = ctr_env.output(container)
    assert re.search(r"^Max open files +1234 +4321 +files", limits, re.M), limits
    annotations = _spec(ctr_env, container)["annotations"]
    assert annotations["example.com/first"] == "yes"  # type: ignore[index]
    assert annotations["example.com/second"] == "yes"  # type: ignore[index]
    _remove_pod(ctr_env, pod_id)


def test_two_plugins_setting_the_same_thing_fail_the_create_and_leave_no_container(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    def setting(value: str):  # type: ignore[no-untyped-def]
        def answer(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
            return nri.CreateContainerResponse(
                adjust=nri.ContainerAdjustment(annotations={"example.com/owner": value})
            )

        return answer

    plugins.start("alpha", "10", answers={"CreateContainer": setting("alpha")})
    plugins.start("beta", "20", answers={"CreateContainer": setting("beta")})
    pod_id, config = ctr_env.pod("nri-conflict")

    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.create(pod_id, config, "contested", args=["sleep 1000"])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "example.com/owner" in caught.value.details()
    assert "alpha" in caught.value.details() and "beta" in caught.value.details()
    assert not [c for c in _all_containers(ctr_env) if c.pod_sandbox_id == pod_id]

    for plugin in plugins.started:
        plugin.answers.clear()
    container = ctr_env.create(pod_id, config, "contested", args=["sleep 1000"])
    assert ctr_env.status(container).status.metadata.name == "contested"
    _remove_pod(ctr_env, pod_id)


def test_a_validating_plugin_sees_the_merged_adjustment_and_its_owners_and_may_reject(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    def setter(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        adjust = _env_adjustment(
            ("FORBIDDEN", "1") if "bad" in request.container.name else ("OK", "1")
        )
        return nri.CreateContainerResponse(adjust=adjust)

    def judge(
        request: nri.ValidateContainerAdjustmentRequest,
    ) -> nri.ValidateContainerAdjustmentResponse:
        keys = {kv.key for kv in request.adjust.env}
        return nri.ValidateContainerAdjustmentResponse(
            reject="FORBIDDEN" in keys, reason="FORBIDDEN is not allowed here"
        )

    plugins.start("setter", "10", answers={"CreateContainer": setter})
    validator = plugins.start(
        "validator",
        "90",
        events=1 << (nri.VALIDATE_CONTAINER_ADJUSTMENT - 1),
        answers={"ValidateContainerAdjustment": judge},
    )
    pod_id, config = ctr_env.pod("nri-validate")

    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.create(pod_id, config, "bad", args=["sleep 1000"])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "90-validator" in caught.value.details()
    assert "FORBIDDEN is not allowed here" in caught.value.details()
    assert not [c for c in _all_containers(ctr_env) if c.pod_sandbox_id == pod_id]

    good = ctr_env.create(pod_id, config, "good", args=["sleep 1000"])
    judged = [s.message for s in validator.seen if s.event == "ValidateContainerAdjustment"]
    assert [s.event for s in validator.seen] == ["ValidateContainerAdjustment"] * 2, "only that"
    owners = judged[1].owners.owners[good].compound[nri.Env].owners
    assert owners["OK"] == "10-setter"
    assert [(p.name, p.index) for p in judged[1].plugins] == [("setter", "10")]
    _remove_pod(ctr_env, pod_id)


def _env_adjustment(*pairs: tuple[str, str]) -> nri.ContainerAdjustment:
    return nri.ContainerAdjustment(env=[nri.KeyValue(key=k, value=v) for k, v in pairs])


def test_an_adjustment_criproxy_cannot_apply_is_refused_not_dropped(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    def seccomp(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        policy = nri.LinuxSeccomp(default_action="SCMP_ACT_ALLOW")
        adjust = nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(seccomp_policy=policy))
        return nri.CreateContainerResponse(adjust=adjust)

    plugins.start("loosener", answers={"CreateContainer": seccomp})
    pod_id, config = ctr_env.pod("nri-seccomp")
    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.create(pod_id, config, "c", args=["sleep 1000"])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a seccomp profile" in caught.value.details()
    assert not [c for c in _all_containers(ctr_env) if c.pod_sandbox_id == pod_id]
    _remove_pod(ctr_env, pod_id)


def test_a_plugins_cdi_devices_are_injected_and_an_unknown_one_fails_the_create(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    spec_dir = ctr_env.pods.proxy.base / "cdi"
    spec_dir.mkdir(exist_ok=True)
    (spec_dir / "nri-test.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.6.0",
                "kind": "nri.example/dev",
                "devices": [
                    {
                        "name": "null",
                        "containerEdits": {
                            "env": ["NRI_CDI=yes"],
                            "deviceNodes": [{"path": "/dev/nri-cdi-null", "hostPath": "/dev/null"}],
                        },
                    }
                ],
            }
        )
    )

    def devices(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        name = "nri.example/dev=null" if request.container.name == "ok" else "nri.example/dev=gone"
        return nri.CreateContainerResponse(
            adjust=nri.ContainerAdjustment(CDI_devices=[nri.CDIDevice(name=name)])
        )

    plugins.start("devices", answers={"CreateContainer": devices})
    pod_id, config = ctr_env.pod("nri-cdi")
    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.create(pod_id, config, "missing", args=["sleep 1000"])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nri.example/dev=gone" in caught.value.details()
    assert not [c for c in _all_containers(ctr_env) if c.pod_sandbox_id == pod_id]

    container = ctr_env.run(pod_id, config, "ok", args=["sleep 1000"])
    out = ctr_env.exec(container, "sh", "-c", "echo x > /dev/nri-cdi-null && echo $NRI_CDI")
    assert out.stdout == b"yes\n", out.stderr
    _remove_pod(ctr_env, pod_id)


def test_a_plugin_past_its_deadline_is_dropped_and_the_call_goes_on(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    slow = plugins.start("slow", delay={"RunPodSandbox": 30})
    began = time.monotonic()
    pod_id, _ = ctr_env.pod("nri-slow")
    took = time.monotonic() - began

    assert ctr_env.pods.status(pod_id).status.state == api_pb2.SANDBOX_READY
    assert took < 20, f"the call waited {took:.1f}s for a plugin with a 2s deadline"
    assert slow.closed.wait(10), "criproxy closed the late plugin's connection"
    assert "10-slow" not in _connected(ctr_env)
    _remove_pod(ctr_env, pod_id)
    assert [s.event for s in slow.seen] == ["RunPodSandbox"], "a dropped plugin gets nothing"


def test_a_plugin_that_goes_away_is_dropped_and_calls_go_on(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    plugin = plugins.start("leaving")
    plugin.stop()
    wait_until(lambda: "10-leaving" not in _connected(ctr_env), 10, what="the plugin dropped")
    pod_id, config = ctr_env.pod("nri-after-leaving")
    container = ctr_env.run(pod_id, config, "c", args=["sleep 1000"])
    assert ctr_env.status(container).status.state == api_pb2.CONTAINER_RUNNING
    _remove_pod(ctr_env, pod_id)


def test_a_plugin_joining_while_containers_are_made_loses_none(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    pod_id, config = ctr_env.pod("nri-late")
    made: list[str] = []
    errors: list[BaseException] = []

    def creator(worker: int) -> None:
        try:
            for n in range(8):
                made.append(ctr_env.create(pod_id, config, f"c{worker}-{n}", args=["sleep 1"]))
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=creator, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    wait_until(lambda: len(made) >= 3, 60, what="the first containers")
    late = plugins.start("late", delay={"Synchronize": 0.5})
    for w in workers:
        w.join(120)
    assert not errors, errors
    assert len(made) == 24

    assert late.synced is not None
    in_snapshot = {c.id for c in late.synced.containers}
    as_events = {s.container for s in late.seen if s.event == "CreateContainer"}
    assert len(in_snapshot & set(made)) >= 3, "the containers made before it joined"
    assert as_events, "creations went on during its synchronisation and reached it as events"
    assert not in_snapshot & as_events, "a container is in the snapshot or an event, not both"
    assert set(made) <= in_snapshot | as_events, "every container made reached the plugin"
    _remove_pod(ctr_env, pod_id)


def test_linux_adjustments_reach_the_container_and_its_status(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    limit = 96 * 1024 * 1024

    def linux(request: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        adjust = nri.ContainerAdjustment(
            linux=nri.LinuxContainerAdjustment(
                devices=[
                    nri.LinuxDevice(
                        path="/dev/nri-null",
                        type="c",
                        major=1,
                        minor=3,
                        file_mode=nri.OptionalFileMode(value=0o666),
                    )
                ],
                resources=nri.LinuxResources(
                    memory=nri.LinuxMemory(limit=nri.OptionalInt64(value=limit)),
                    pids=nri.LinuxPids(limit=77),
                ),
                sysctl={"kernel.shm_rmid_forced": "1"},
            )
        )
        return nri.CreateContainerResponse(adjust=adjust)

    plugins.start("resources", answers={"CreateContainer": linux})
    pod_id, config = ctr_env.pod("nri-linux")
    container = ctr_env.run(pod_id, config, "limited", args=["sleep 1000"])

    wrote = ctr_env.exec(container, "sh", "-c", "echo x > /dev/nri-null && echo ok")
    assert wrote.stdout == b"ok\n", wrote.stderr
    cgroup = ctr_env.exec(
        container,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
        "/proc/sys/kernel/shm_rmid_forced",
    ).stdout.split()
    assert cgroup == [str(limit).encode(), b"77", b"1"]
    status = ctr_env.status(container).status
    assert status.resources.linux.memory_limit_in_bytes == limit
    _remove_pod(ctr_env, pod_id)


MiB = 1024 * 1024


def _cgroup(env: ContainerEnv, container_id: str) -> list[bytes]:
    files = ["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max"]
    return env.exec(container_id, "cat", *files).stdout.split()


def _update(env: ContainerEnv, container_id: str, memory: int) -> None:
    env.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=container_id,
            linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=memory),
        ),
        timeout=30,
    )


def test_update_container_resources_goes_through_the_plugins(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    def halve(request: nri.UpdateContainerRequest) -> nri.UpdateContainerResponse:
        wanted = request.linux_resources.memory.limit.value
        resources = nri.LinuxResources(
            memory=nri.LinuxMemory(limit=nri.OptionalInt64(value=wanted // 2)),
            pids=nri.LinuxPids(limit=55),
        )
        update = nri.ContainerUpdate(
            container_id=request.container.id,
            linux=nri.LinuxContainerUpdate(resources=resources),
        )
        return nri.UpdateContainerResponse(update=[update])

    plugin = plugins.start("limits", answers={"UpdateContainer": halve})
    pod_id, config = ctr_env.pod("nri-update")
    container = ctr_env.run(pod_id, config, "c", args=["sleep 1000"])

    _update(ctr_env, container, 128 * MiB)

    assert _cgroup(ctr_env, container) == [str(64 * MiB).encode(), b"55"]
    status = ctr_env.status(container).status
    assert status.resources.linux.memory_limit_in_bytes == 64 * MiB
    asked = next(s.message for s in plugin.seen if s.event == "UpdateContainer")
    assert asked.linux_resources.memory.limit.value == 128 * MiB
    assert plugin.events_of(container)[-2:] == ["UpdateContainer", "PostUpdateContainer"]

    plugin.answers["UpdateContainer"] = refuse("not today")
    with pytest.raises(grpc.RpcError) as caught:
        _update(ctr_env, container, 256 * MiB)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not today" in caught.value.details()
    assert _cgroup(ctr_env, container)[0] == str(64 * MiB).encode(), "a veto changes nothing"
    _remove_pod(ctr_env, pod_id)


def test_a_plugin_updates_and_evicts_containers_of_its_own_accord(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    plugin = plugins.start("manager")
    pod_id, config = ctr_env.pod("nri-unsolicited")
    container = ctr_env.run(pod_id, config, "c", args=["sleep 1000"])
    victim = ctr_env.run(pod_id, config, "victim", args=["sleep 1000"])

    def update(container_id: str, memory: int, ignore: bool = False) -> nri.ContainerUpdate:
        resources = nri.LinuxResources(
            memory=nri.LinuxMemory(limit=nri.OptionalInt64(value=memory))
        )
        return nri.ContainerUpdate(
            container_id=container_id,
            linux=nri.LinuxContainerUpdate(resources=resources),
            ignore_failure=ignore,
        )

    failed = plugin.update_containers(
        [update(container, 80 * MiB), update("no-such", MiB), update("also-none", MiB, True)]
    )
    assert [f.container_id for f in failed] == ["no-such"], "ignore_failure is not reported"
    assert _cgroup(ctr_env, container)[0] == str(80 * MiB).encode()
    assert ctr_env.status(container).status.resources.linux.memory_limit_in_bytes == 80 * MiB
    assert "UpdateContainer" not in plugin.events_of(container), "its own update: no event"

    plugin.update_containers([], [nri.ContainerEviction(container_id=victim, reason="test")])
    assert ctr_env.wait_exited(victim).state == api_pb2.CONTAINER_EXITED
    assert ctr_env.status(container).status.state == api_pb2.CONTAINER_RUNNING
    _remove_pod(ctr_env, pod_id)


def test_update_pod_sandbox_resources_goes_through_the_plugins(
    ctr_env: ContainerEnv, plugins: Plugins
) -> None:
    plugin = plugins.start("pods")
    pod_id, _ = ctr_env.pod("nri-pod-update")
    ctr_env.runtime.UpdatePodSandboxResources(
        api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id,
            resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=200 * MiB),
        ),
        timeout=30,
    )
    events = [s for s in plugin.seen if s.pod == pod_id]
    assert [s.event for s in events] == [
        "RunPodSandbox",
        "UpdatePodSandbox",
        "PostUpdatePodSandbox",
    ]
    assert events[1].message.linux_resources.memory.limit.value == 200 * MiB

    plugin.answers["UpdatePodSandbox"] = refuse("pods stay as they are")
    with pytest.raises(grpc.RpcError) as caught:
        ctr_env.runtime.UpdatePodSandboxResources(
            api_pb2.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod_id,
                resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=300 * MiB),
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _remove_pod(ctr_env, pod_id)


def _records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_pre_installed_plugin_is_started_again_and_synchronised_after_a_kill(
    ctr_env: ContainerEnv,
) -> None:
    """A plugin in plugin_path, started by criproxy with its configuration; after kill -9
    the old one goes with its connection and the new criproxy's is synchronised with every
    pod and container, as they were."""
    proxy = ctr_env.pods.proxy
    record = proxy.base / "pre-installed.jsonl"
    installed = proxy.base / "nri-plugins" / "05-recorder"
    installed.parent.mkdir(exist_ok=True)
    (proxy.base / "nri-conf").mkdir(exist_ok=True)
    (proxy.base / "nri-conf" / "recorder.conf").write_text(f"{record}\n")
    repo = Path(__file__).resolve().parents[2]
    installed.write_text(
        f"#!/bin/sh\ncd {repo} && exec {sys.executable} -m tests.support.nri_plugin\n"
    )
    installed.chmod(0o755)
    try:
        proxy.stop()
        proxy.start()
        wait_until(lambda: "05-recorder" in _connected(ctr_env), 30, what="the plugin")
        first = _records(record)[0]
        assert first["event"] == "Synchronize"

        pod_id, config = ctr_env.pod("nri-pre-installed")
        container = ctr_env.run(pod_id, config, "c", args=["sleep 1000"])
        seen = {(r["event"], r.get("container")) for r in _records(record)}
        assert ("StartContainer", container) in seen

        proxy.kill()
        wait_until(lambda: not pid_alive(int(first["pid"])), 10, what="the old plugin to exit")
        proxy.start()
        wait_until(
            lambda: len([r for r in _records(record) if r["event"] == "Synchronize"]) == 2,
            30,
            what="the new plugin's synchronisation",
        )
        synced = [r for r in _records(record) if r["event"] == "Synchronize"][-1]
        assert synced["pid"] != first["pid"], "a new plugin process"
        assert pod_id in synced["pods"]  # type: ignore[operator]
        assert container in synced["containers"]  # type: ignore[operator]
        assert ctr_env.status(container).status.state == api_pb2.CONTAINER_RUNNING

        ctr_env.stop(container, timeout=1)
        wait_until(
            lambda: (
                ("StopContainer", container)
                in {(r["event"], r.get("container")) for r in _records(record)}
            ),
            10,
            what="the new plugin to see the stop",
        )
        _remove_pod(ctr_env, pod_id)
    finally:
        installed.unlink()
        proxy.stop()
        proxy.start()
