"""CRI containers over a real containerd and runc, in pods on a real CNI network."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import anyio
import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containerd import Containerd
from criproxy.stats.cgroupfs import process_cgroup, read_cgroup
from criproxy.stats.containerd import decode_metrics
from criproxy.stats.sample import CgroupSample
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import wait_until
from tests.support.images import ImageConfig, busybox_image

BUSYBOX_REPO = "test/busybox"


def test_command_args_env_and_working_dir_from_image_and_config(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("proc")
    default = ctr_env.run(pod_id, pod, "default")
    assert ctr_env.wait_exited(default).exit_code == 0
    assert ctr_env.output(default) == "image-default\n"

    custom = ctr_env.run(
        pod_id,
        pod,
        "custom",
        args=['echo "$FROM_IMAGE $OVERRIDE $FROM_CONFIG $HOSTNAME"; pwd'],
        envs=[
            api_pb2.KeyValue(key="OVERRIDE", value=b"config"),
            api_pb2.KeyValue(key="FROM_CONFIG", value=b"yes"),
        ],
        working_dir="/home",
    )
    status = ctr_env.wait_exited(custom)
    assert status.exit_code == 0, ctr_env.output(custom)
    assert ctr_env.output(custom) == "image config yes proc\n/home\n"
    assert status.reason == "Completed"
    assert status.image_id.startswith("sha256:")
    assert status.image.image == ctr_env.image

    replaced = ctr_env.run(pod_id, pod, "replaced", command=["/bin/echo"], args=["a", "b"])
    ctr_env.wait_exited(replaced)
    assert ctr_env.output(replaced) == "a b\n"


def test_exit_codes_and_reasons(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("exits")
    ok = ctr_env.run(pod_id, pod, "ok", args=["exit 0"])
    fail = ctr_env.run(pod_id, pod, "fail", args=["exit 3"])
    s_ok, s_fail = ctr_env.wait_exited(ok), ctr_env.wait_exited(fail)
    assert (s_ok.exit_code, s_ok.reason) == (0, "Completed")
    assert (s_fail.exit_code, s_fail.reason) == (3, "Error")
    assert s_fail.started_at > 0 and s_fail.finished_at >= s_fail.started_at

    killed = ctr_env.run(pod_id, pod, "killed", args=["sleep 1000"])
    assert ctr_env.status(killed).status.state == api_pb2.CONTAINER_RUNNING
    ctr_env.stop(killed, timeout=0)
    s_killed = ctr_env.status(killed).status
    assert s_killed.state == api_pb2.CONTAINER_EXITED
    assert (s_killed.exit_code, s_killed.reason) == (137, "Error")
    ctr_env.stop(killed)  # idempotent


def test_stop_kills_a_process_that_ignores_sigterm_after_the_timeout(
    ctr_env: ContainerEnv,
) -> None:
    pod_id, pod = ctr_env.pod("stubborn")
    container = ctr_env.run(pod_id, pod, "stubborn", args=["trap '' TERM; sleep 1000 & wait"])
    time.sleep(0.3)
    started = time.monotonic()
    ctr_env.stop(container, timeout=2)
    took = time.monotonic() - started
    status = ctr_env.status(container).status
    assert status.state == api_pb2.CONTAINER_EXITED
    assert status.exit_code == 137
    assert 1.5 < took < 15

    polite = ctr_env.run(pod_id, pod, "polite", args=["trap 'exit 7' TERM; sleep 1000 & wait"])
    time.sleep(0.3)
    ctr_env.stop(polite, timeout=30)
    assert ctr_env.status(polite).status.exit_code == 7


def test_log_lines_land_in_order_with_streams_and_partial_tags(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("logs")
    long_line = "x" * 40000
    script = (
        "echo out1; echo err1 >&2; echo out2; printf '\\r\\n'; "
        f"printf '{long_line}\\n'; printf 'tail-without-newline'"
    )
    container = ctr_env.run(pod_id, pod, "logger", args=[script])
    ctr_env.wait_exited(container)
    entries = ctr_env.log_entries(container)
    stdout = [(tag, content) for stream, tag, content in entries if stream == "stdout"]
    stderr = [(tag, content) for stream, tag, content in entries if stream == "stderr"]
    assert stderr == [("F", "err1")]
    assert stdout[:3] == [("F", "out1"), ("F", "out2"), ("F", "")]
    chunks = stdout[3:-1]
    assert [tag for tag, _ in chunks] == ["P", "P", "F"]  # 16 KiB lines at most
    assert "".join(c for _, c in chunks) == long_line
    assert max(len(c) for _, c in chunks) == 16 * 1024
    assert stdout[-1] == ("P", "tail-without-newline")


def test_reopen_container_log_after_rename(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("rotate")
    container = ctr_env.run(
        pod_id,
        pod,
        "ticker",
        args=["i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done"],
    )
    path = ctr_env.log_path(container)
    time.sleep(0.5)
    rotated = path.with_name(path.name + ".1")
    path.rename(rotated)
    ctr_env.runtime.ReopenContainerLog(
        api_pb2.ReopenContainerLogRequest(container_id=container), timeout=30
    )
    time.sleep(0.5)
    ctr_env.stop(container)
    old = [line.split(" ", 3)[3] for line in rotated.read_text().splitlines()]
    new = [line.split(" ", 3)[3] for line in path.read_text().splitlines()]
    assert old and new
    numbers = [int(x.removeprefix("tick")) for x in old + new]
    assert numbers == list(range(len(numbers)))  # nothing lost, nothing twice


def test_exec_sync_output_exit_code_and_timeout(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("exec")
    container = ctr_env.run(pod_id, pod, "sleeper", args=["sleep 1000"])
    result = ctr_env.exec(container, "sh", "-c", "echo hello; echo oops >&2; exit 4")
    assert (result.stdout, result.stderr, result.exit_code) == (b"hello\n", b"oops\n", 4)

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        ctr_env.exec(container, "sleep", "30", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    # the timed-out process was killed
    ps = ctr_env.exec(container, "ps", "-o", "args").stdout.decode()
    assert "sleep 30" not in ps


def test_twenty_concurrent_exec_syncs_all_complete(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("execs")
    container = ctr_env.run(pod_id, pod, "target", args=["sleep 1000"])
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = ctr_env.exec(container, "sh", "-c", f"sleep 0.2; echo {i}").stdout
        except BaseException as err:  # collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {i: f"{i}\n".encode() for i in range(20)}


def test_non_root_image_user_and_supplemental_groups(
    ctr_env: ContainerEnv,
    registry_http,  # type: ignore[no-untyped-def]
) -> None:
    image = busybox_image(config=ImageConfig(user="tester", cmd=("sleep", "1000")))
    registry_http.push(BUSYBOX_REPO, image, "user")
    ref = registry_http.reference(BUSYBOX_REPO, "user")
    ctr_env.pods.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )
    pod_id, pod = ctr_env.pod("users")
    container = ctr_env.run(pod_id, pod, "tester", image=ref)
    ids = ctr_env.exec(container, "id").stdout.decode()
    assert "uid=1000(tester) gid=1000(tester)" in ids
    assert "50(staff)" in ids and "33(www-data)" in ids
    user = ctr_env.status(container).status.user.linux
    assert (user.uid, user.gid) == (1000, 1000)
    assert {50, 33} <= set(user.supplemental_groups)

    strict = ctr_env.run(
        pod_id,
        pod,
        "strict",
        image=ref,
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                supplemental_groups=[4242],
                supplemental_groups_policy=api_pb2.Strict,
            )
        ),
    )
    groups = ctr_env.exec(strict, "id", "-G").stdout.decode().split()
    assert "50" not in groups and "4242" in groups


def test_security_context_is_enforced(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("secure")
    ro = ctr_env.run(
        pod_id,
        pod,
        "ro",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(readonly_rootfs=True)
        ),
    )
    assert ctr_env.exec(ro, "touch", "/newfile").exit_code != 0
    assert ctr_env.exec(ro, "touch", "/tmp/../etc/x").exit_code != 0

    nochown = ctr_env.run(
        pod_id,
        pod,
        "nochown",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                capabilities=api_pb2.Capability(drop_capabilities=["CHOWN"])
            )
        ),
    )
    assert ctr_env.exec(nochown, "chown", "1000", "/tmp").exit_code != 0
    withchown = ctr_env.run(pod_id, pod, "withchown", args=["sleep 1000"])
    assert ctr_env.exec(withchown, "chown", "1000", "/tmp").exit_code == 0

    seccomp = ctr_env.run(
        pod_id,
        pod,
        "seccomp",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                seccomp=api_pb2.SecurityProfile(
                    profile_type=api_pb2.SecurityProfile.RuntimeDefault
                ),
            )
        ),
    )
    # The default profile refuses new namespaces without CAP_SYS_ADMIN...
    blocked = ctr_env.exec(seccomp, "unshare", "-U", "true")
    assert blocked.exit_code != 0
    unconfined = ctr_env.run(pod_id, pod, "unconfined", args=["sleep 1000"])
    # ...while without a profile a user namespace is allowed.
    assert ctr_env.exec(unconfined, "unshare", "-U", "true").exit_code == 0


def test_privileged_container_sees_host_devices(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod(
        "priv",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(privileged=True)
        ),
    )
    privileged = ctr_env.run(
        pod_id,
        pod,
        "priv",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(privileged=True)
        ),
    )
    plain = ctr_env.run(pod_id, pod, "plain", args=["sleep 1000"])
    host_only = "loop-control" if os.path.exists("/dev/loop-control") else "kmsg"
    assert ctr_env.exec(privileged, "ls", f"/dev/{host_only}").exit_code == 0
    assert ctr_env.exec(plain, "ls", f"/dev/{host_only}").exit_code != 0


def test_memory_limit_is_the_cgroups_and_oom_is_reported(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("memory")
    limit = 32 * 1024 * 1024
    resources = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit
    )
    limited = ctr_env.run(
        pod_id,
        pod,
        "limited",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(resources=resources),
    )
    cgroup_value = ctr_env.exec(limited, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if cgroup_value.exit_code != 0:  # cgroup v2 layout
        cgroup_value = ctr_env.exec(limited, "cat", "/sys/fs/cgroup/memory.max")
    assert int(cgroup_value.stdout) == limit
    assert ctr_env.status(limited).status.resources.linux.memory_limit_in_bytes == limit

    hog = ctr_env.run(
        pod_id,
        pod,
        "hog",
        args=["x=$(yes 0123456789abcdef | head -c 200000000); echo survived"],
        linux=api_pb2.LinuxContainerConfig(resources=resources),
    )
    status = ctr_env.wait_exited(hog, timeout=60)
    assert status.reason == "OOMKilled", (status.exit_code, ctr_env.output(hog))
    assert status.exit_code == 137


def test_validation_and_unknown_ids(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("validate")
    runtime = ctr_env.runtime

    def code(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        return err.value.code()  # type: ignore[no-any-return]

    escaping = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="bad"),
        image=api_pb2.ImageSpec(image=ctr_env.image),
        log_path="../../etc/evil.log",
    )
    assert (
        code(
            runtime.CreateContainer,
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=escaping),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    no_name = api_pb2.ContainerConfig(image=api_pb2.ImageSpec(image=ctr_env.image))
    assert (
        code(
            runtime.CreateContainer,
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=no_name),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    missing_image = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="noimage"),
        image=api_pb2.ImageSpec(image="example.invalid/none:1"),
    )
    assert (
        code(
            runtime.CreateContainer,
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=missing_image),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(runtime.ContainerStatus, api_pb2.ContainerStatusRequest(container_id=""))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code(runtime.ContainerStatus, api_pb2.ContainerStatusRequest(container_id="f" * 64))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(runtime.StartContainer, api_pb2.StartContainerRequest(container_id="f" * 64))
        == grpc.StatusCode.NOT_FOUND
    )
    ctr_env.remove("f" * 64)  # removing an unknown container is fine

    first = ctr_env.create(pod_id, pod, "twice", args=["true"])
    with pytest.raises(grpc.RpcError) as err:
        ctr_env.create(pod_id, pod, "twice", args=["true"])
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in str(err.value.details())
    # nothing of the refused ones is left
    names = [
        c.metadata.name for c in runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    ]
    assert "bad" not in names and "noimage" not in names


def test_list_filters_and_remove_cleans_up(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("listing")
    running = ctr_env.run(pod_id, pod, "running", args=["sleep 1000"], labels={"tier": "a"})
    created = ctr_env.create(pod_id, pod, "created", args=["true"], labels={"tier": "b"})
    runtime = ctr_env.runtime

    def ids(**flt: object) -> set[str]:
        request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(**flt))  # type: ignore[arg-type]
        return {c.id for c in runtime.ListContainers(request).containers}

    assert ids(pod_sandbox_id=pod_id) == {running, created}
    assert ids(id=running[:10]) == {running}
    assert ids(label_selector={"tier": "b"}) == {created}
    assert ids(
        pod_sandbox_id=pod_id,
        state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING),
    ) == {running}
    io_dir = ctr_env.pods.proxy.state / "containers" / running
    assert io_dir.exists()
    ctr_env.remove(running)
    ctr_env.remove(running)
    assert ids(pod_sandbox_id=pod_id) == {created}
    assert running not in ctr_env.pods.ctr("containers", "ls", "-q").stdout
    # the snapshot and the files go right after the answer
    wait_until(
        lambda: not io_dir.exists() and running not in ctr_env.pods.ctr("snapshots", "ls").stdout,
        10,
    )


def test_stop_and_remove_pod_take_its_containers(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("podstop")
    a = ctr_env.run(pod_id, pod, "a", args=["sleep 1000"])
    b = ctr_env.run(pod_id, pod, "b", args=["sleep 1000"])
    ctr_env.pods.stop(pod_id)
    assert {ctr_env.status(c).status.state for c in (a, b)} == {api_pb2.CONTAINER_EXITED}
    ctr_env.pods.remove(pod_id)
    listed = ctr_env.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert not {a, b} & {c.id for c in listed}
    assert a not in ctr_env.pods.ctr("containers", "ls", "-q").stdout


def test_stats_are_non_zero_and_move_when_the_container_allocates(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("stats")
    container = ctr_env.run(pod_id, pod, "stats", args=["sleep 1000"])
    runtime = ctr_env.runtime
    request = api_pb2.ContainerStatsRequest(container_id=container)
    first = runtime.ContainerStats(request, timeout=30).stats
    assert first.attributes.id == container
    assert first.attributes.metadata.name == "stats"
    assert first.cpu.usage_core_nano_seconds.value > 0
    assert first.memory.working_set_bytes.value > 0
    assert first.writable_layer.fs_id.mountpoint

    # 24 MiB in the pod's tmpfs /dev/shm are charged to the writer's memory cgroup
    fill = ctr_env.exec(
        container,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24; "
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    )
    assert fill.exit_code == 0, fill.stderr
    second = runtime.ContainerStats(request, timeout=30).stats
    grown = second.memory.usage_bytes.value - first.memory.usage_bytes.value
    assert grown > 20 * 1024 * 1024
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.usage_nano_cores.value > 0

    listed = runtime.ListContainerStats(
        api_pb2.ListContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod_id)
        ),
        timeout=30,
    ).stats
    assert [s.attributes.id for s in listed] == [container]

    ctr_env.exec(container, "ping", "-c", "1", "-W", "1", pod_env_gateway(ctr_env, pod_id))
    pod_stats = runtime.PodSandboxStats(
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30
    ).stats
    assert pod_stats.attributes.id == pod_id
    assert pod_stats.linux.memory.working_set_bytes.value >= second.memory.working_set_bytes.value
    assert pod_stats.linux.network.default_interface.name == "eth0"
    assert pod_stats.linux.network.default_interface.tx_bytes.value > 0
    assert pod_stats.linux.process.process_count.value >= 2
    assert [c.attributes.id for c in pod_stats.linux.containers] == [container]

    descriptors = runtime.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest()).descriptors
    names = {d.name for d in descriptors}
    assert "container_memory_working_set_bytes" in names
    metrics = runtime.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest()).pod_metrics
    mine = [m for m in metrics if m.pod_sandbox_id == pod_id]
    assert mine and any(
        m.name == "container_memory_working_set_bytes" and m.value.value > 0
        for c in mine[0].container_metrics
        for m in c.metrics
    )


def test_pod_metrics_count_open_files_and_sockets_and_the_image_filesystem(
    ctr_env: ContainerEnv,
) -> None:
    """The figures cAdvisor reads from /proc and statvfs: a listening socket and four more
    files opened by the container show, the image filesystem's size and inodes are the
    host's, the swap limit is the request's."""
    pod_id, pod = ctr_env.pod("metrics-files")
    container = ctr_env.run(
        pod_id,
        pod,
        "files",
        args=["nc -l -p 9000 & exec 7</etc/passwd 8</etc/group 9>/tmp/x 6</bin; sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=64 << 20
            )
        ),
    )
    runtime = ctr_env.runtime

    def figures() -> dict[str, tuple[list[str], int]]:
        listed = runtime.ListPodSandboxMetrics(
            api_pb2.ListPodSandboxMetricsRequest(), timeout=30
        ).pod_metrics
        mine = next(m for m in listed if m.pod_sandbox_id == pod_id)
        (ours,) = [c for c in mine.container_metrics if c.container_id == container]
        return {m.name: (list(m.label_values), m.value.value) for m in ours.metrics}

    # the writable layer is measured for the first call, not left to a later one
    assert "container_fs_usage_bytes" in figures()
    wait_until(lambda: figures().get("container_sockets", ([], 0))[1] >= 1, 10)
    got = figures()
    descriptors = {
        d.name: list(d.label_keys)
        for d in runtime.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest()).descriptors
    }
    for name, (labels, _) in got.items():
        assert len(labels) == len(descriptors[name]), name  # in step with the descriptors
    # nc (started first): 0-2 and its socket; the shell (or the sleep it became): 0-2, 6-9
    assert got["container_file_descriptors"][1] >= 4 + 7
    assert got["container_sockets"][1] == 1
    assert got["container_ulimits_soft"][0][-1] == "max_open_files"
    assert got["container_ulimits_soft"][1] > 0
    host = os.statvfs(got["container_fs_limit_bytes"][0][-1])
    assert got["container_fs_limit_bytes"][1] == host.f_blocks * host.f_frsize
    assert got["container_fs_inodes_total"][1] == host.f_files
    assert 0 < got["container_fs_inodes_free"][1] <= host.f_files
    assert got["container_spec_memory_swap_limit_bytes"][1] == 64 << 20
    assert "container_memory_kernel_usage" in got
    ctr_env.remove(container)


def pod_env_gateway(ctr_env: ContainerEnv, pod_id: str) -> str:
    """The bridge's address: the first of the pod's subnet."""
    ip = ctr_env.pods.status(pod_id).status.network.ip
    a, b, _, _ = ip.split(".")
    return f"{a}.{b}.0.1"


def test_kill_9_keeps_every_container_and_its_log_keeps_flowing(ctr_env: ContainerEnv) -> None:
    proxy = ctr_env.pods.proxy
    pod_id, pod = ctr_env.pod("restart")
    ticker = ctr_env.run(
        pod_id,
        pod,
        "ticker",
        args=["i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done"],
    )
    done = ctr_env.run(pod_id, pod, "done", args=["exit 5"])
    ctr_env.wait_exited(done)
    dying = ctr_env.run(pod_id, pod, "dying", args=["sleep 1.5; exit 9"])
    created = ctr_env.create(pod_id, pod, "created", args=["true"])
    ids = (ticker, done, dying, created)
    before = {c: ctr_env.status(c).status for c in ids}

    proxy.kill()
    time.sleep(3)  # `dying` exits while nobody listens; the ticker's output waits in its FIFO
    proxy.start()

    after = {c: ctr_env.status(c).status for c in ids}
    for c in ids:
        assert after[c].id == before[c].id
        assert after[c].created_at == before[c].created_at
        assert after[c].log_path == before[c].log_path
    assert after[ticker].state == api_pb2.CONTAINER_RUNNING
    assert after[ticker].started_at == before[ticker].started_at
    assert after[done].state == api_pb2.CONTAINER_EXITED
    assert (after[done].exit_code, after[done].finished_at) == (5, before[done].finished_at)
    assert after[dying].state == api_pb2.CONTAINER_EXITED
    assert (after[dying].exit_code, after[dying].reason) == (9, "Error")
    assert after[dying].finished_at > before[dying].started_at
    assert after[created].state == api_pb2.CONTAINER_CREATED

    time.sleep(0.5)
    ctr_env.stop(ticker)
    ticks = [int(content.removeprefix("tick")) for _, _, content in ctr_env.log_entries(ticker)]
    assert len(ticks) > 30
    assert ticks == list(range(len(ticks)))  # nothing lost across the restart
    ctr_env.start(created)
    assert ctr_env.wait_exited(created).exit_code == 0


def test_recursive_read_only_mounts_cover_submounts(ctr_env: ContainerEnv) -> None:
    status = ctr_env.runtime.Status(api_pb2.StatusRequest())
    assert status.features.supplemental_groups_policy
    rro = {h.name: h.features.recursive_read_only_mounts for h in status.runtime_handlers}
    assert rro[""] and rro["runc"]  # runc 1.1 lists rro in `runc features`; crun 1.8 cannot say
    host = Path(tempfile.mkdtemp(prefix="cpx-rro-", dir="/tmp"))
    (host / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "rro-test", str(host / "sub")], check=True)
    try:
        pod_id, pod = ctr_env.pod("rro")

        def with_mount(name: str, rro: bool) -> str:
            mount = api_pb2.Mount(
                container_path="/data", host_path=str(host), readonly=True, recursive_read_only=rro
            )
            return ctr_env.run(pod_id, pod, name, args=["sleep 1000"], mounts=[mount])

        recursive, plain = with_mount("recursive", True), with_mount("plain", False)
        assert ctr_env.exec(recursive, "touch", "/data/sub/x").exit_code != 0
        assert ctr_env.exec(plain, "touch", "/data/sub/y").exit_code == 0  # ro is not recursive
        assert ctr_env.exec(plain, "touch", "/data/z").exit_code != 0

        bad = api_pb2.Mount(container_path="/data", host_path=str(host), recursive_read_only=True)
        with pytest.raises(grpc.RpcError) as err:
            ctr_env.create(pod_id, pod, "bad", args=["true"], mounts=[bad])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "readonly" in str(err.value.details())
        for c in (recursive, plain):
            ctr_env.remove(c)
    finally:
        subprocess.run(["umount", str(host / "sub")], check=False)
        shutil.rmtree(host, ignore_errors=True)


def test_mount_options_make_a_bind_noexec_nosuid_nodev(ctr_env: ContainerEnv) -> None:
    status = ctr_env.runtime.Status(api_pb2.StatusRequest())
    assert status.features.mount_options  # advertised: the kubelet sends them only then
    host = Path(tempfile.mkdtemp(prefix="cpx-mntopt-", dir="/tmp"))
    shutil.copy("/bin/busybox", host / "true")  # busybox runs the applet it is named
    try:
        pod_id, pod = ctr_env.pod("mntopt")

        def with_options(name: str, *options: str, readonly: bool = False) -> str:
            mount = api_pb2.Mount(
                container_path="/data",
                host_path=str(host),
                readonly=readonly,
                mount_options=list(options),
            )
            return ctr_env.run(pod_id, pod, name, args=["sleep 1000"], mounts=[mount])

        hardened = with_options("hardened", "noexec", "nosuid", "nodev")
        read_only = with_options("readonly", "noexec", readonly=True)
        plain = with_options("plain")
        for container in (hardened, read_only):  # the shell's 126: found, not executable
            assert ctr_env.exec(container, "sh", "-c", "/data/true").exit_code == 126
        assert ctr_env.exec(plain, "sh", "-c", "/data/true").exit_code == 0

        def flags(container: str) -> set[str]:
            mountinfo = ctr_env.exec(container, "cat", "/proc/self/mountinfo").stdout.decode()
            (line,) = [ln for ln in mountinfo.splitlines() if ln.split()[4] == "/data"]
            return set(line.split()[5].split(","))

        assert {"noexec", "nosuid", "nodev", "rw"} <= flags(hardened)
        assert {"noexec", "ro"} <= flags(read_only)
        assert not {"noexec", "nosuid", "nodev"} & flags(plain)
        assert ctr_env.status(hardened).status.mounts[0].mount_options == [
            "noexec",
            "nosuid",
            "nodev",
        ]

        bad = api_pb2.Mount(container_path="/data", host_path=str(host), mount_options=["exec"])
        with pytest.raises(grpc.RpcError) as err:
            ctr_env.create(pod_id, pod, "bad", args=["true"], mounts=[bad])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "mount_options ['exec'] not supported" in str(err.value.details())
        for c in (hardened, read_only, plain):
            ctr_env.remove(c)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _userns_pod(ctr_env: ContainerEnv, name: str, userns: api_pb2.UserNamespace):  # type: ignore[no-untyped-def]
    return ctr_env.pod(
        name,
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(userns_options=userns)
            )
        ),
    )


def test_pod_user_namespace_maps_ids(ctr_env: ContainerEnv) -> None:
    mapping = [api_pb2.IDMapping(container_id=0, host_id=1000, length=100000)]
    userns = api_pb2.UserNamespace(mode=api_pb2.POD, uids=mapping, gids=mapping)
    pod_id, pod = _userns_pod(ctr_env, "userns", userns)
    container = ctr_env.run(
        pod_id,
        pod,
        "userns",
        args=["cat /proc/self/uid_map; sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(userns_options=userns)
            )
        ),
    )
    time.sleep(0.3)
    assert ctr_env.output(container).split() == ["0", "1000", "100000"]
    pid = int(ctr_env.info(container)["pid"])  # type: ignore[call-overload]
    assert Path(f"/proc/{pid}/status").read_text().count("\t1000\t") >= 1  # host uid 1000
    assert ctr_env.exec(container, "id", "-u").stdout == b"0\n"
    lo_flags = ctr_env.exec(container, "cat", "/sys/class/net/lo/flags").stdout
    assert int(lo_flags, 16) & 0x1  # lo is up in the netns the pod's user namespace owns
    # the image's files are the pod root's (idmapped layers): it may write anywhere
    assert ctr_env.exec(container, "stat", "-c", "%u:%g", "/bin/busybox").stdout == b"0:0\n"
    assert ctr_env.exec(container, "touch", "/etc/new-file").exit_code == 0
    status = ctr_env.pods.status(pod_id).status
    assert status.state == api_pb2.SANDBOX_READY and status.network.ip
    idmaps = ctr_env.pods.proxy.state / "idmap"
    assert ctr_env.pods.mounts_under(idmaps)
    ctr_env.pods.stop(pod_id)
    ctr_env.pods.remove(pod_id)
    assert not list((ctr_env.pods.proxy.state / "sandboxes").glob(f"{pod_id}*"))
    assert not ctr_env.pods.mounts_under(idmaps)
    assert not list(idmaps.iterdir())
    # the shared image layers are intact
    plain_pod, plain = ctr_env.pod("after-userns")
    after = ctr_env.run(plain_pod, plain, "after", args=["ls -ln /bin/busybox"])
    assert ctr_env.wait_exited(after).exit_code == 0
    assert ctr_env.output(after).split()[2:4] == ["0", "0"]  # host root's again


def test_bad_user_namespaces_are_refused(ctr_env: ContainerEnv) -> None:
    two = [
        api_pb2.IDMapping(container_id=0, host_id=1000, length=100000),
        api_pb2.IDMapping(container_id=0, host_id=2000, length=100000),
    ]
    unmapped_root = [api_pb2.IDMapping(container_id=1, host_id=1000, length=100000)]
    for i, userns in enumerate(
        (
            api_pb2.UserNamespace(mode=api_pb2.POD, uids=two, gids=two),
            api_pb2.UserNamespace(mode=api_pb2.POD, uids=unmapped_root, gids=unmapped_root),
            api_pb2.UserNamespace(mode=api_pb2.CONTAINER),
            api_pb2.UserNamespace(mode=api_pb2.TARGET),
        )
    ):
        with pytest.raises(grpc.RpcError) as err:
            _userns_pod(ctr_env, f"baduserns{i}", userns)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [p for p in ctr_env.pods.list() if p.metadata.name.startswith("baduserns")]


def test_container_events_stream_the_lifecycle_with_statuses(ctr_env: ContainerEnv) -> None:
    runtime = ctr_env.runtime
    stream = runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=60)
    slow = runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=60)  # never read
    time.sleep(0.3)
    pod_id, pod = ctr_env.pod("events")
    container = ctr_env.run(pod_id, pod, "evented", args=["sleep 1000"])
    ctr_env.stop(container)
    ctr_env.remove(container)
    seen: list[tuple[int, int]] = []
    for event in stream:
        if event.container_id != container:
            continue
        states = {s.id: s.state for s in event.containers_statuses}
        seen.append((event.container_event_type, states.get(container, -1)))
        assert event.pod_sandbox_status.id == pod_id
        assert event.created_at > 0
        if event.container_event_type == api_pb2.CONTAINER_DELETED_EVENT:
            break
    stream.cancel()
    slow.cancel()
    assert seen == [
        (api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_CREATED),
        (api_pb2.CONTAINER_STARTED_EVENT, api_pb2.CONTAINER_RUNNING),
        (api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_EXITED),
        (api_pb2.CONTAINER_DELETED_EVENT, -1),
    ]


def test_update_resources_reach_the_running_task(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("update")
    container = ctr_env.run(pod_id, pod, "updated", args=["sleep 1000"])
    limit = 48 * 1024 * 1024
    ctr_env.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=container,
            linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit, cpu_shares=512),
        ),
        timeout=30,
    )
    read = ctr_env.exec(container, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(read.stdout) == limit
    shares = ctr_env.exec(container, "cat", "/sys/fs/cgroup/cpu/cpu.shares")
    assert int(shares.stdout) == 512
    status = ctr_env.status(container).status
    assert status.resources.linux.memory_limit_in_bytes == limit
    # an update naming only the quota keeps the memory limit and the shares (as containerd)
    ctr_env.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=container,
            linux=api_pb2.LinuxContainerResources(cpu_quota=50000, cpu_period=100000),
        ),
        timeout=30,
    )
    merged = ctr_env.status(container).status.resources.linux
    assert (merged.memory_limit_in_bytes, merged.cpu_shares, merged.cpu_quota) == (
        limit,
        512,
        50000,
    )
    spec = ctr_env.info(container)["runtimeSpec"]
    assert spec["linux"]["resources"]["cpu"]["quota"] == 50000  # type: ignore[index]

    # a created container starts with what the update gave it
    created = ctr_env.create(pod_id, pod, "later", args=["sleep 1000"])
    ctr_env.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=created,
            linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit),
        ),
        timeout=30,
    )
    ctr_env.start(created)
    read = ctr_env.exec(created, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(read.stdout) == limit


def test_image_id_tty_missing_log_dir_and_host_paths(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("misc")
    image = ctr_env.pods.proxy.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ctr_env.image))
    ).image
    tty = ctr_env.run(pod_id, pod, "tty", args=["echo hello-tty; tty"], tty=True)
    status = ctr_env.wait_exited(tty)
    assert status.image_id == image.id
    listed = ctr_env.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(id=tty))
    ).containers
    assert listed[0].image_id == image.id
    assert ctr_env.output(tty).splitlines()[0] == "hello-tty"
    assert "/dev/pts/" in ctr_env.output(tty)

    # a directory inside the pod's log directory is made, as containerd does...
    nested = ctr_env.run(pod_id, pod, "nested", args=["echo nested"], log_path="sub/0.log")
    ctr_env.wait_exited(nested)
    assert ctr_env.output(nested) == "nested\n"
    # ...and so is a pod's log directory that is gone: the container starts and logs
    lost_pod, lost = ctr_env.pod("lostlogs")
    Path(lost.log_directory).rmdir()
    lost_ctr = ctr_env.run(lost_pod, lost, "nolog", args=["echo logged"])
    assert ctr_env.wait_exited(lost_ctr).exit_code == 0
    assert (Path(lost.log_directory) / "nolog.log").is_file()
    assert ctr_env.output(lost_ctr) == "logged\n"

    host_dir = Path(tempfile.mkdtemp(prefix="cpx-hostpath-", dir="/tmp")) / "not" / "there"
    mount = api_pb2.Mount(container_path="/data", host_path=str(host_dir))
    writer = ctr_env.run(pod_id, pod, "writer", args=["echo x > /data/file"], mounts=[mount])
    assert ctr_env.wait_exited(writer).exit_code == 0
    assert (host_dir / "file").read_text() == "x\n"  # created as a directory, as containerd
    shutil.rmtree(host_dir.parent.parent, ignore_errors=True)


def test_devices_and_the_configured_stop_signal(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("devices")
    device = api_pb2.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    container = ctr_env.run(
        pod_id,
        pod,
        "dev",
        args=["trap 'exit 42' INT; sleep 1000 & wait"],
        devices=[device],
        stop_signal=api_pb2.SIGNAL_SIGINT,
    )
    assert ctr_env.exec(container, "sh", "-c", "echo x > /dev/mynull").exit_code == 0
    assert ctr_env.exec(container, "stat", "-c", "%t:%T", "/dev/mynull").stdout == b"1:3\n"
    assert ctr_env.status(container).status.stop_signal == api_pb2.SIGNAL_SIGINT
    time.sleep(0.3)
    ctr_env.stop(container, timeout=30)
    assert ctr_env.status(container).status.exit_code == 42
    # a real-time stop signal is sent as the number it stands for (SIGRTMIN+1 = 35)
    realtime = ctr_env.run(
        pod_id,
        pod,
        "rt",
        args=["trap 'exit 43' 35; sleep 1000 & wait"],
        stop_signal=api_pb2.SIGNAL_SIGRTMINPLUS1,
    )
    assert ctr_env.status(realtime).status.stop_signal == api_pb2.SIGNAL_SIGRTMINPLUS1
    time.sleep(0.3)
    ctr_env.stop(realtime, timeout=30)
    assert ctr_env.status(realtime).status.exit_code == 43


def test_stats_do_not_wait_for_a_stuck_shim(ctr_env: ContainerEnv) -> None:
    """The container's cgroup is read from cgroupfs: no shim round trip on the call path."""
    pod_id, pod = ctr_env.pod("stuckshim")
    container = ctr_env.run(pod_id, pod, "c", args=["sleep 1000"])
    request = api_pb2.ContainerStatsRequest(container_id=container)
    before = ctr_env.runtime.ContainerStats(request, timeout=30).stats
    assert before.memory.working_set_bytes.value > 0
    pid = int(ctr_env.info(container)["pid"])  # type: ignore[call-overload]
    shim = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(shim, signal.SIGSTOP)
    try:
        started = time.monotonic()
        during = ctr_env.runtime.ContainerStats(request, timeout=10).stats
        listed = ctr_env.runtime.ListContainerStats(
            api_pb2.ListContainerStatsRequest(
                filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod_id)
            ),
            timeout=10,
        ).stats
        took = time.monotonic() - started
    finally:
        os.kill(shim, signal.SIGCONT)
    assert took < 2
    assert during.memory.working_set_bytes.value > 0
    assert during.cpu.timestamp > before.cpu.timestamp  # a fresh reading, not the last one
    assert [s.attributes.id for s in listed] == [container]
    assert ctr_env.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=5).containers


def test_cgroupfs_samples_match_containerds_task_metrics(ctr_env: ContainerEnv) -> None:
    """What criproxy reads from cgroupfs is what containerd's tasks.Metrics reports for the
    same container: limits exactly, counters of a sleeping container within a hair."""
    pod_id, pod = ctr_env.pod("cgroupfs")
    container = ctr_env.run(
        pod_id,
        pod,
        "c",
        args=["dd if=/dev/zero of=/tmp/f bs=64k count=16 2>/dev/null; sync; sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=96 * 1024 * 1024, cpu_period=100000, cpu_quota=50000
            )
        ),
    )
    time.sleep(0.5)  # dd and sync done: the counters rest
    pid = int(ctr_env.info(container)["pid"])  # type: ignore[call-overload]

    async def both() -> tuple[CgroupSample | None, CgroupSample]:
        client = Containerd(str(ctr_env.pods.containerd.socket), "k8s.io")
        (metric,) = await client.tasks.metrics([container])
        dirs = process_cgroup(pid)
        ours = read_cgroup(dirs) if dirs else None
        return ours, decode_metrics(metric.type_url, metric.value)

    ours, theirs = anyio.run(both)
    assert ours is not None
    exact = [
        "cgroup_version",
        "has_cpu",
        "has_memory",
        "memory_limit_bytes",
        "swap_limit_bytes",
        "pids",
        "pids_limit",
        "oom_kills",
        "cpu_periods",
        "cpu_throttled_periods",
        "block_io",
    ]
    assert {f: getattr(ours, f) for f in exact} == {f: getattr(theirs, f) for f in exact}
    assert ours.memory_limit_bytes == 96 * 1024 * 1024
    close = [
        "cpu_usage_ns",
        "cpu_user_ns",
        "cpu_system_ns",
        "memory_usage_bytes",
        "memory_working_set_bytes",
        "rss_bytes",
        "cache_bytes",
        "inactive_file_bytes",
        "page_faults",
        "container_page_faults",
    ]
    for field in close:
        a, b = getattr(ours, field), getattr(theirs, field)
        assert abs(a - b) <= max(a, b) * 0.05 + 64 * 1024, (field, a, b)
    assert ours.cpu_usage_ns > 0 and ours.memory_usage_bytes > 0


def test_kubelet_style_pod_cgroup_hugepages_and_pod_stats(ctr_env: ContainerEnv) -> None:
    parent = f"/cpx-test-pod-{os.getpid()}"
    pod_id, pod = ctr_env.pod(
        "podcgroup", linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=parent)
    )
    limit = 96 * 1024 * 1024
    memory_dir = Path("/sys/fs/cgroup/memory") / parent.strip("/")
    try:
        (memory_dir / "memory.limit_in_bytes").write_text(str(limit))  # what the kubelet sets
        # the kubelet sends a 0 limit for each hugepage size the host has
        hugepages = [
            api_pb2.HugepageLimit(page_size="2MB", limit=0),
            api_pb2.HugepageLimit(page_size="1GB", limit=0),
        ]
        container = ctr_env.run(
            pod_id,
            pod,
            "c",
            args=["sleep 1000"],
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(hugepage_limits=hugepages)
            ),
        )
        assert ctr_env.status(container).status.state == api_pb2.CONTAINER_RUNNING
        request = api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id)
        first = ctr_env.runtime.PodSandboxStats(request, timeout=30).stats.linux
        memory = first.memory
        assert memory.working_set_bytes.value > 0
        assert memory.available_bytes.value == limit - memory.working_set_bytes.value
        ctr_env.exec(container, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
        second = ctr_env.runtime.PodSandboxStats(request, timeout=30).stats.linux
        assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
        assert second.cpu.usage_nano_cores.value > 0
    finally:
        ctr_env.pods.stop(pod_id)
        ctr_env.pods.remove(pod_id)
        for controller in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (controller / parent.strip("/")).rmdir()


def test_image_volumes_start_with_the_images_files(
    ctr_env: ContainerEnv,
    registry_http,  # type: ignore[no-untyped-def]
) -> None:
    from tests.support.images import file_layer

    image = busybox_image(
        config=ImageConfig(cmd=("sleep", "1000"), volumes=("/data",)),
        extra_layers=[file_layer({"data/seed.txt": b"from the image\n"})],
    )
    registry_http.push(BUSYBOX_REPO, image, "volume")
    ref = registry_http.reference(BUSYBOX_REPO, "volume")
    ctr_env.pods.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )
    pod_id, pod = ctr_env.pod("volumes")
    first = ctr_env.run(pod_id, pod, "first", image=ref)
    second = ctr_env.run(pod_id, pod, "second", image=ref)
    assert ctr_env.exec(first, "cat", "/data/seed.txt").stdout == b"from the image\n"
    assert ctr_env.exec(first, "sh", "-c", "echo mine > /data/new").exit_code == 0
    assert ctr_env.exec(second, "ls", "/data").stdout.split() == [b"seed.txt"]  # its own copy
    mounts = ctr_env.info(first)["runtimeSpec"]["mounts"]  # type: ignore[index]
    assert any(m["destination"] == "/data" for m in mounts)
    ctr_env.stop(first)
    ctr_env.remove(first)
    first_volumes = ctr_env.pods.proxy.root / "containers" / first
    wait_until(lambda: not first_volumes.exists(), 10)  # right after the answer


def test_concurrent_identical_creates_make_one_container(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("samename")
    results: list[object] = []

    def create() -> None:
        try:
            results.append(ctr_env.create(pod_id, pod, "twin", args=["true"]))
        except grpc.RpcError as err:
            results.append(err.code())

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 1, results
    assert results.count(grpc.StatusCode.ALREADY_EXISTS) == 3


def test_bad_enums_are_invalid_argument(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("badenums")
    for fields in (
        {"stop_signal": 999},
        {
            "linux": api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(pid=9)  # type: ignore[arg-type]
                )
            )
        },
    ):
        with pytest.raises(grpc.RpcError) as err:
            ctr_env.create(pod_id, pod, "bad", args=["true"], **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields


def test_raising_the_memory_limit_moves_swap_with_it(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod("grow")
    small = 64 * 1024 * 1024
    container = ctr_env.run(
        pod_id,
        pod,
        "grow",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=small)
        ),
    )
    ctr_env.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=container,
            linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=2 * small),
        ),
        timeout=30,
    )
    read = ctr_env.exec(container, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(read.stdout) == 2 * small


def test_a_task_started_by_a_killed_criproxy_is_adopted(ctr_env: ContainerEnv) -> None:
    proxy = ctr_env.pods.proxy
    pod_id, pod = ctr_env.pod("adopted")
    container = ctr_env.create(pod_id, pod, "half-started", args=["sleep 1000"])
    proxy.kill()
    # as if criproxy died between the task's start and recording it
    before = time.time_ns()
    started = ctr_env.pods.ctr("task", "start", "-d", container)
    after = time.time_ns()
    assert started.returncode == 0, started.stderr
    time.sleep(1.0)
    proxy.start()
    status = ctr_env.status(container).status
    assert status.state == api_pb2.CONTAINER_RUNNING
    # the process's own start, not the adoption's (to the kernel's clock tick)
    assert before - 20_000_000 <= status.started_at <= after
    ctr_env.stop(container)
    assert ctr_env.status(container).status.state == api_pb2.CONTAINER_EXITED
    ctr_env.remove(container)
    assert container not in ctr_env.pods.ctr("containers", "ls", "-q").stdout


def test_a_started_containers_record_says_running_and_survives_a_kill(
    ctr_env: ContainerEnv,
) -> None:
    """StartContainer answers before its record is written; the write follows at once."""
    proxy = ctr_env.pods.proxy
    pod_id, pod = ctr_env.pod("persisted")
    container = ctr_env.run(pod_id, pod, "c", args=["sleep 1000"])
    started_at = ctr_env.status(container).status.started_at

    def recorded_state() -> str:
        info = json.loads(ctr_env.pods.ctr("containers", "info", container).stdout)
        record = json.loads(base64.b64decode(info["Extensions"]["container"]["value"]))
        return str(record["state"])

    wait_until(lambda: recorded_state() == "running", 5, what="the running state written")
    proxy.kill()
    proxy.start()
    status = ctr_env.status(container).status
    assert (status.state, status.started_at) == (api_pb2.CONTAINER_RUNNING, started_at)
    ctr_env.stop(container)
    ctr_env.remove(container)


def test_a_container_that_exits_at_once_is_recorded_exited_not_running(
    ctr_env: ContainerEnv,
) -> None:
    """The start's own write of RUNNING goes out after the answer; an exit right behind it
    must still be the state on record (a kill -9 then shows it, not RUNNING)."""
    proxy = ctr_env.pods.proxy
    pod_id, pod = ctr_env.pod("quick-exit")
    quick = [ctr_env.run(pod_id, pod, f"q{i}", args=[f"exit {i}"]) for i in range(5)]
    for i, container in enumerate(quick):
        assert ctr_env.wait_exited(container).exit_code == i
    proxy.kill()
    proxy.start()
    for i, container in enumerate(quick):
        status = ctr_env.status(container).status
        assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, i)
        ctr_env.remove(container)


def test_image_symlinks_never_reach_the_host(
    ctr_env: ContainerEnv,
    registry_http,  # type: ignore[no-untyped-def]
) -> None:
    from tests.support.images import LayerBuilder

    links = LayerBuilder().symlink("hostroot", "/").build("links")
    image = busybox_image(
        config=ImageConfig(cmd=("sleep", "1000"), volumes=("/hostroot/etc",)),
        extra_layers=[links],
    )
    registry_http.push(BUSYBOX_REPO, image, "links")
    ref = registry_http.reference(BUSYBOX_REPO, "links")
    ctr_env.pods.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )
    pod_id, pod = ctr_env.pod("links")
    container = ctr_env.run(pod_id, pod, "links", image=ref)
    assert Path("/etc/debian_version").exists()
    listing = ctr_env.exec(container, "ls", "/hostroot/etc").stdout.split()
    assert b"debian_version" not in listing  # the link resolved in the rootfs, not the host
    volumes = ctr_env.pods.proxy.root / "containers" / container
    copied = [p.name for p in volumes.rglob("*")]
    assert "debian_version" not in copied
