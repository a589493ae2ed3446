"""CheckpointContainer over a real containerd, runc and CRIU.

The refusals run everywhere. The checkpoints themselves need CRIU >= 4 (3.x cannot dump on
this kernel generation): they run where one is found (`CRIPROXY_TEST_CRIU`, else `criu`
on PATH, else /usr/local/sbin/criu) and are skipped, saying so, where none is.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest

from criproxy import criu
from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.conftest import CRIU_MISSING
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import wait_until

COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"


def _find_criu() -> criu.Criu:
    candidates = [os.environ.get("CRIPROXY_TEST_CRIU", ""), shutil.which("criu") or ""]
    candidates.append("/usr/local/sbin/criu")
    found = criu.Criu(
        "", "", "none found ($CRIPROXY_TEST_CRIU, criu on PATH, /usr/local/sbin/criu)"
    )
    for path in candidates:
        if path and Path(path).is_file():
            found = criu.probe(path)
            if found.usable:
                return found
    return found


@pytest.fixture(scope="module")
def out_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cpx-ckpt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cp_env(ctr_env: ContainerEnv) -> ContainerEnv:
    """The module's criproxy, restarted with `[checkpoint] criu_path` naming a CRIU >= 4."""
    found = _find_criu()
    if not found.usable:
        pytest.skip(f"{CRIU_MISSING}: {found.problem}")
    proxy = ctr_env.pods.proxy
    proxy.config["checkpoint"] = {"criu_path": found.path}
    proxy.stop()
    proxy.start()
    return ctr_env


def _checkpoint(env: ContainerEnv, container_id: str, location: str, timeout: int = 0) -> None:
    env.runtime.CheckpointContainer(
        api_pb2.CheckpointContainerRequest(
            container_id=container_id, location=location, timeout=timeout
        ),
        timeout=120,
    )


def _refusal(env: ContainerEnv, container_id: str, location: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _checkpoint(env, container_id, location)
    return err.value


def _counted(env: ContainerEnv, container_id: str) -> list[int]:
    """The numbers the counter logged so far."""
    log = env.status(container_id).status.log_path
    return [int(line.split()[-1]) for line in Path(log).read_text().splitlines() if line]


def _counter_archive(
    env: ContainerEnv, out_dir: Path, name: str, *, before: str = "", counted: int = 0
) -> Path:
    """The archive of a counter checkpointed in a pod of its own once it ran `before` (a
    shell command) and counted past `counted`; the counter removed."""
    pod_id, pod = env.pod(f"{name}-src")
    counter = env.run(pod_id, pod, "counter", args=[COUNTER])
    if before:
        assert env.exec(counter, "sh", "-c", before).exit_code == 0
    wait_until(lambda: len(_counted(env, counter)) > counted, 10)
    archive = out_dir / f"{name}.tar"
    _checkpoint(env, counter, str(archive))
    env.remove(counter)
    return archive


def _rewritten(
    archive: Path,
    dest: Path,
    edit: Callable[[tarfile.TarInfo, IO[bytes] | None], IO[bytes] | bool | None],
) -> Path:
    """A copy of `archive` whose members pass through `edit`: False drops one, a stream
    replaces its data (the member's size must be set to match), anything else keeps it."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            edited = edit(member, data)
            if edited is False:
                continue
            dst.addfile(member, edited if isinstance(edited, io.IOBase) else data)  # type: ignore[arg-type]
    return dest


def _counts_on(env: ContainerEnv, restored: str, *, carried: int = 20) -> None:
    """A restored counter, just started, carried its log over (more than `carried`
    lines) and counts on from where it was, one by one: a fresh start would print 0."""
    history = len(_counted(env, restored))
    assert history > carried
    wait_until(lambda: len(_counted(env, restored)) > history + 5, 15)
    resumed = _counted(env, restored)[history:]
    assert resumed[0] > carried
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))


def _kill_during(
    env: ContainerEnv, call: Callable[[], object], *, under_way: Callable[[], bool], settle: float
) -> None:
    """criproxy killed (-9) while `call` runs in a thread, once `under_way` holds and
    `settle` seconds more have passed; the call must never have answered."""
    errors: list[grpc.RpcError] = []

    def run() -> None:
        try:
            call()
        except grpc.RpcError as err:
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(under_way, 10)
    time.sleep(settle)
    env.pods.proxy.kill()
    thread.join(60)
    # it never answered: the connection went (or the helper closed its channel on kill)
    assert errors
    assert errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


# --- refusals: no CRIU needed -------------------------------------------------------------


def test_refusals_name_the_problem(ctr_env: ContainerEnv, out_dir: Path) -> None:
    missing = _refusal(ctr_env, "no-such-container", str(out_dir / "a.tar"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    pod_id, pod = ctr_env.pod("ckpt-refusals")
    created = ctr_env.create(pod_id, pod, "created", args=["sleep 1000"])
    err = _refusal(ctr_env, created, str(out_dir / "a.tar"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is CREATED: only a RUNNING container can be checkpointed" in str(err.details())

    running = ctr_env.run(pod_id, pod, "running", args=["sleep 1000"])
    for location, says in (
        ("", "location is required"),
        ("relative.tar", "must be an absolute path"),
        (str(out_dir / "no-dir" / "a.tar"), "does not exist"),
        (str(out_dir), "is a directory"),
    ):
        err = _refusal(ctr_env, running, location)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, location
        assert says in str(err.details())
    assert not list(out_dir.iterdir())
    for c in (created, running):
        ctr_env.remove(c)


def test_without_a_working_criu_the_answer_says_so(
    ctr_env: ContainerEnv, out_dir: Path, tmp_path: Path
) -> None:
    """A CRIU that is not one (here a script printing an old version) is refused before
    anything is dumped, and the container runs on."""
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    fake.chmod(0o755)
    proxy = ctr_env.pods.proxy
    saved = dict(proxy.config)
    proxy.config["checkpoint"] = {"criu_path": str(fake)}
    proxy.stop()
    proxy.start()
    try:
        pod_id, pod = ctr_env.pod("ckpt-nocriu")
        running = ctr_env.run(pod_id, pod, "running", args=["sleep 1000"])
        err = _refusal(ctr_env, running, str(out_dir / "nocriu.tar"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"CRIU {fake} is 3.17.1; checkpoints need CRIU >= 4.0" in str(err.details())
        assert ctr_env.status(running).status.state == api_pb2.CONTAINER_RUNNING
        assert not (out_dir / "nocriu.tar").exists()
        ctr_env.remove(running)
    finally:
        proxy.config.clear()
        proxy.config.update(saved)
        proxy.stop()
        proxy.start()


# --- checkpoints: CRIU >= 4 -------------------------------------------------------------------


def test_a_checkpoint_leaves_the_container_running_and_holds_it_whole(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    pod_id, pod = cp_env.pod("ckpt-counter")
    counter = cp_env.run(pod_id, pod, "counter", args=[COUNTER])
    wait_until(lambda: len(_counted(cp_env, counter)) > 5, 10)
    # the writable layer: a file written, one of the image's removed
    assert cp_env.exec(counter, "sh", "-c", "echo kept > /root-note; rm /etc/group").exit_code == 0
    archives = [out_dir / "one.tar", out_dir / "two.tar"]
    for archive in archives:  # twice: the second must hold CRIU's images too
        _checkpoint(cp_env, counter, str(archive))
    before = len(_counted(cp_env, counter))
    wait_until(lambda: len(_counted(cp_env, counter)) > before + 5, 10)  # it counts on
    assert cp_env.status(counter).status.state == api_pb2.CONTAINER_RUNNING

    for archive in archives:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            assert {"config.dump", "spec.dump", "status.dump", "rootfs-diff.tar"} <= names
            assert {"dump.log", "container.log", "deleted.files"} <= names
            images = {n.removeprefix("checkpoint/") for n in names if n.startswith("checkpoint/")}
            assert "inventory.img" in images
            assert any(n.startswith("pages-") for n in images)
            config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
            assert config["id"] == counter
            assert config["name"] == "counter"
            assert config["rootfsImageName"].endswith("test/busybox:1")
            assert config["checkpointedTime"].endswith("Z")
            status = json.load(tar.extractfile("status.dump"))  # type: ignore[arg-type]
            assert status["id"] == counter
            assert status["state"] == api_pb2.CONTAINER_RUNNING
            spec = json.load(tar.extractfile("spec.dump"))  # type: ignore[arg-type]
            assert spec["process"]["args"][-1] == COUNTER
            assert json.load(tar.extractfile("deleted.files")) == ["/etc/group"]  # type: ignore[arg-type]
            with tarfile.open(fileobj=tar.extractfile("rootfs-diff.tar")) as diff:
                diff_names = diff.getnames()
                assert "root-note" in diff_names
                assert "etc/.wh.group" in diff_names
                assert diff.extractfile("root-note").read() == b"kept\n"  # type: ignore[union-attr]
    leftovers = [p.name for p in out_dir.iterdir() if p not in archives]
    assert leftovers == []
    assert not list((cp_env.pods.proxy.root / "checkpoints").iterdir())
    cp_env.remove(counter)


def test_kill_9_during_a_checkpoint_leaves_no_archive_and_the_container_running(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    pod_id, pod = cp_env.pod("ckpt-kill")
    # ~200 MiB in the shell's memory: CRIU takes a while to write it out
    big = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); " + COUNTER
    busy = cp_env.run(pod_id, pod, "busy", args=[big])
    wait_until(lambda: len(_counted(cp_env, busy)) > 3, 60)
    archive = out_dir / "killed.tar"
    checkpoints = cp_env.pods.proxy.root / "checkpoints"
    _kill_during(
        cp_env,
        lambda: _checkpoint(cp_env, busy, str(archive)),
        under_way=lambda: checkpoints.exists() and any(checkpoints.iterdir()),
        settle=0.1,  # CRIU starts dumping 200 MB (it cannot be done this soon)
    )
    cp_env.pods.proxy.start()
    assert not archive.exists()
    assert [p.name for p in out_dir.iterdir() if p.name.startswith((".killed", "killed"))] == []
    assert not checkpoints.exists() or not list(checkpoints.iterdir())  # swept at start
    wait_until(lambda: cp_env.status(busy).status.state == api_pb2.CONTAINER_RUNNING, 30)
    counted = len(_counted(cp_env, busy))
    wait_until(lambda: len(_counted(cp_env, busy)) > counted + 5, 30)  # not left frozen
    _checkpoint(cp_env, busy, str(archive))  # and it can be checkpointed again
    assert tarfile.is_tarfile(archive)
    cp_env.remove(busy)
    archive.unlink()


def test_a_checkpoint_past_its_timeout_answers_deadline_exceeded_and_leaves_nothing(
    cp_env: ContainerEnv, out_dir: Path, tmp_path: Path
) -> None:
    """A CRIU that takes longer than the call's `timeout` (here the real one, started 30 s
    late by a wrapper) ends the call with DEADLINE_EXCEEDED well before it would finish,
    with no archive and the container running on."""
    real = cp_env.pods.proxy.config["checkpoint"]["criu_path"]
    slow = tmp_path / "criu"
    slow.write_text(f'#!/bin/sh\n[ "$1" = swrk ] && sleep 30\nexec {real} "$@"\n')
    slow.chmod(0o755)
    proxy = cp_env.pods.proxy
    proxy.config["checkpoint"] = {"criu_path": str(slow)}
    proxy.stop()
    proxy.start()
    try:
        pod_id, pod = cp_env.pod("ckpt-timeout")
        counter = cp_env.run(pod_id, pod, "counter", args=[COUNTER])
        archive = out_dir / "late.tar"
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            _checkpoint(cp_env, counter, str(archive), timeout=2)
        took = time.monotonic() - began
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
        assert took < 25  # the deadline ended it, not CRIU
        assert not archive.exists()
        assert [p.name for p in out_dir.iterdir() if "late" in p.name] == []
        assert cp_env.status(counter).status.state == api_pb2.CONTAINER_RUNNING
        counted = len(_counted(cp_env, counter))
        wait_until(lambda: len(_counted(cp_env, counter)) > counted + 5, 10)  # not frozen
        checkpoints = proxy.root / "checkpoints"
        assert not checkpoints.exists() or not list(checkpoints.iterdir())
        cp_env.remove(counter)
    finally:
        # the shim's runc went with the deadline; its wrapper child sleeps on, orphaned
        subprocess.run(["pkill", "-f", str(slow)], check=False)
        proxy.config["checkpoint"] = {"criu_path": real}
        proxy.stop()
        proxy.start()


# --- CheckpointPod ------------------------------------------------------------------------


def _checkpoint_pod(
    env: ContainerEnv, pod_id: str, output: Path, container_ids: list[str], **options: str
) -> None:
    env.runtime.CheckpointPod(
        api_pb2.CheckpointPodRequest(
            pod_sandbox_id=pod_id,
            output_path=str(output),
            container_ids=container_ids,
            options=options,
        ),
        timeout=120,
    )


def _log_gaps(env: ContainerEnv, container_id: str, at_least: float) -> list[tuple[float, float]]:
    """The silences longer than `at_least` seconds in a counter's log, as (from, to)."""
    import datetime

    log = Path(env.status(container_id).status.log_path).read_text().splitlines()
    times = [
        datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        for line in log
        if line
    ]
    return [(a, b) for a, b in itertools.pairwise(times) if b - a > at_least]


def test_pod_checkpoint_refusals(ctr_env: ContainerEnv, out_dir: Path) -> None:
    pod_id, pod = ctr_env.pod("podckpt-refusals")
    other_id, other = ctr_env.pod("podckpt-other")
    mine = ctr_env.run(pod_id, pod, "mine", args=["sleep 1000"])
    theirs = ctr_env.run(other_id, other, "theirs", args=["sleep 1000"])
    empty = out_dir / "pod-refusals"
    empty.mkdir()
    full = out_dir / "pod-full"
    full.mkdir()
    (full / "x").write_text("x")
    cases: list[tuple[str, Path, list[str], dict[str, str], grpc.StatusCode, str]] = [
        ("no-such-pod", empty, [mine], {}, grpc.StatusCode.NOT_FOUND, "no-such-pod"),
        (pod_id, empty, [], {}, grpc.StatusCode.INVALID_ARGUMENT, "container_ids is required"),
        (pod_id, empty, [mine, mine], {}, grpc.StatusCode.INVALID_ARGUMENT, "twice"),
        (pod_id, empty, [mine, theirs], {}, grpc.StatusCode.INVALID_ARGUMENT, "belongs to pod"),
        (pod_id, empty, [mine], {"x": "y"}, grpc.StatusCode.INVALID_ARGUMENT, "not supported"),
        (pod_id, full, [mine], {}, grpc.StatusCode.INVALID_ARGUMENT, "is not empty"),
        (pod_id, Path("rel"), [mine], {}, grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
    ]
    for sandbox, output, ids, options, code, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            _checkpoint_pod(ctr_env, sandbox, output, ids, **options)
        assert err.value.code() == code, (sandbox, ids, options)
        assert says in str(err.value.details())
    assert list(empty.iterdir()) == []
    for c in (mine, theirs):
        ctr_env.remove(c)


def test_a_pod_checkpoint_is_one_cut_and_leaves_the_pod_running(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    pod_id, pod = cp_env.pod("podckpt")
    # 50 MB each: every dump takes a while, so a pod frozen for all of them shows
    weighty = "x=$(head -c 50000000 /dev/zero | tr '\\0' a); " + COUNTER
    a = cp_env.run(pod_id, pod, "a", args=[weighty])
    b = cp_env.run(pod_id, pod, "b", args=[weighty])
    wait_until(lambda: min(len(_counted(cp_env, c)) for c in (a, b)) > 5, 10)
    output = out_dir / "pod"
    output.mkdir()
    _checkpoint_pod(cp_env, pod_id, output, [a, b])
    for c in (a, b):
        before = len(_counted(cp_env, c))
        wait_until(lambda c=c, before=before: len(_counted(cp_env, c)) > before + 5, 10)  # type: ignore[misc]
        assert cp_env.status(c).status.state == api_pb2.CONTAINER_RUNNING

    assert sorted(p.name for p in output.iterdir()) == ["a.tar", "b.tar", "pod.dump", "pod.options"]
    dump = json.loads((output / "pod.dump").read_text())
    assert dump["metadata"]["name"] == "podckpt"
    assert dump["sandbox_id"] == pod_id
    assert json.loads((output / "pod.options").read_text())["containers"] == ["a", "b"]
    for name, container in (("a", a), ("b", b)):
        with tarfile.open(output / f"{name}.tar") as tar:
            config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
            assert config["id"] == container
            assert "checkpoint/inventory.img" in tar.getnames()
    # one cut: both were frozen over the same stretch, not one after the other
    gaps_a, gaps_b = (_log_gaps(cp_env, c, 0.3) for c in (a, b))
    overlap = max(
        (min(ea, eb) - max(sa, sb) for sa, ea in gaps_a for sb, eb in gaps_b), default=0.0
    )
    assert overlap > 0.3, (gaps_a, gaps_b)
    for c in (a, b):
        cp_env.remove(c)


def test_kill_9_during_a_pod_checkpoint_leaves_nothing_and_the_pod_not_frozen(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    pod_id, pod = cp_env.pod("podckpt-kill")
    big = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); " + COUNTER
    busy = cp_env.run(pod_id, pod, "busy", args=[big])
    small = cp_env.run(pod_id, pod, "small", args=[COUNTER])
    wait_until(lambda: min(len(_counted(cp_env, c)) for c in (busy, small)) > 3, 60)
    output = out_dir / "pod-killed"
    output.mkdir()
    _kill_during(
        cp_env,
        lambda: _checkpoint_pod(cp_env, pod_id, output, [busy, small]),
        under_way=lambda: any(output.iterdir()),  # its hidden directory
        settle=0.3,  # the pod is frozen, CRIU is dumping
    )
    cp_env.pods.proxy.start()
    assert list(output.iterdir()) == []  # the partial directory was swept
    for c in (busy, small):  # resumed by the recovery: counting again
        counted = len(_counted(cp_env, c))
        wait_until(lambda c=c, counted=counted: len(_counted(cp_env, c)) > counted + 5, 30)  # type: ignore[misc]
        cp_env.remove(c)


# --- restore through CreateContainer --------------------------------------------------------


def test_a_restored_container_counts_on_from_where_it_was(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    archive = _counter_archive(
        cp_env, out_dir, "restore", before="echo kept > /root-note; rm /etc/group", counted=20
    )

    new_pod, new_config = cp_env.pod("restore-dst")
    restored = cp_env.create(new_pod, new_config, "counter", image=str(archive), args=[COUNTER])
    status = cp_env.status(restored).status
    assert status.state == api_pb2.CONTAINER_CREATED
    assert status.image.image.endswith("test/busybox:1")  # the checkpointed one's image
    assert "@sha256:" in status.image.user_specified_image  # asked for by its digest
    cp_env.start(restored)
    _counts_on(cp_env, restored)
    note = cp_env.exec(restored, "cat", "/root-note")
    assert note.stdout == b"kept\n"  # the writable layer came along,
    assert cp_env.exec(restored, "test", "-e", "/etc/group").exit_code == 1  # deletions too
    assert not list((cp_env.pods.proxy.root / "restores").glob("*"))  # CRIU is done with it
    cp_env.stop(restored)
    cp_env.remove(restored)


def test_a_restore_that_would_grant_other_privileges_is_refused(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    archive = _counter_archive(cp_env, out_dir, "restore-priv")
    new_pod, new_config = cp_env.pod("restore-priv-dst")
    for name, fields, differs in (
        (
            "more-caps",
            {
                "linux": api_pb2.LinuxContainerConfig(
                    security_context=api_pb2.LinuxContainerSecurityContext(
                        capabilities=api_pb2.Capability(add_capabilities=["SYS_ADMIN"])
                    )
                )
            },
            "process.capabilities",
        ),
        (
            "other-user",
            {
                "linux": api_pb2.LinuxContainerConfig(
                    security_context=api_pb2.LinuxContainerSecurityContext(
                        run_as_user=api_pb2.Int64Value(value=1000)
                    )
                )
            },
            "process.user",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            cp_env.create(new_pod, new_config, name, image=str(archive), args=[COUNTER], **fields)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert differs in str(err.value.details())
    listed = cp_env.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=new_pod))
    ).containers
    assert list(listed) == []  # nothing half made
    assert not list((cp_env.pods.proxy.root / "restores").glob("*"))


def test_an_archive_changed_after_the_checkpoint_is_refused(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    archive = _counter_archive(cp_env, out_dir, "restore-tamper")

    def more_caps(member: tarfile.TarInfo, data: IO[bytes] | None) -> IO[bytes] | None:
        if member.name != "spec.dump" or data is None:
            return data
        spec = json.load(data)
        spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
        raw = json.dumps(spec).encode()
        member.size = len(raw)
        return io.BytesIO(raw)

    tampered = _rewritten(archive, out_dir / "tampered.tar", more_caps)
    pod_id, pod = cp_env.pod("restore-tamper-dst")
    with pytest.raises(grpc.RpcError) as err:
        cp_env.create(pod_id, pod, "tampered", image=str(tampered), args=[COUNTER])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec.dump differ from what was signed" in str(err.value.details())


def _restore_pod(
    env: ContainerEnv,
    checkpoint: Path,
    pod: api_pb2.PodSandboxConfig,
    names: list[str],
    **fields: object,
) -> api_pb2.RestorePodResponse:
    from tests.integration.pods_env import set_fields

    configs = []
    for name in names:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=env.image),
            args=[COUNTER],
            log_path=f"{name}.log",
        )
        set_fields(config, fields)
        configs.append(config)
    return env.runtime.RestorePod(  # type: ignore[no-any-return]
        api_pb2.RestorePodRequest(
            checkpoint_path=str(checkpoint), config=pod, container_configs=configs
        ),
        timeout=120,
    )


def _new_pod(env: ContainerEnv, name: str) -> api_pb2.PodSandboxConfig:
    from tests.integration.pods_env import pod_config

    config = pod_config(name)
    config.log_directory = str(env.log_root / name)
    Path(config.log_directory).mkdir(parents=True, exist_ok=True)
    return config


def test_a_restored_pod_continues_both_containers(cp_env: ContainerEnv, out_dir: Path) -> None:
    pod_id, pod = cp_env.pod("podrestore-src")
    a = cp_env.run(pod_id, pod, "a", args=[COUNTER])
    b = cp_env.run(pod_id, pod, "b", args=[COUNTER])
    wait_until(lambda: min(len(_counted(cp_env, c)) for c in (a, b)) > 20, 10)
    checkpoint = out_dir / "podrestore"
    checkpoint.mkdir()
    _checkpoint_pod(cp_env, pod_id, checkpoint, [a, b])
    cp_env.pods.stop(pod_id)
    cp_env.pods.remove(pod_id)

    restored = _restore_pod(cp_env, checkpoint, _new_pod(cp_env, "podrestore-dst"), ["a", "b"])
    assert restored.pod_sandbox_id != pod_id
    assert sorted(r.name for r in restored.restored_containers) == ["a", "b"]
    for r in restored.restored_containers:  # CREATED: nothing ran yet
        assert cp_env.status(r.container_id).status.state == api_pb2.CONTAINER_CREATED
    for r in restored.restored_containers:
        cp_env.start(r.container_id)
    for r in restored.restored_containers:
        history = len(_counted(cp_env, r.container_id))
        wait_until(lambda r=r, h=history: len(_counted(cp_env, r.container_id)) > h + 5, 15)  # type: ignore[misc]
        assert _counted(cp_env, r.container_id)[history] > 20, r.name  # counting on, not anew
    cp_env.pods.stop(restored.pod_sandbox_id)
    cp_env.pods.remove(restored.pod_sandbox_id)


def test_a_pod_restore_that_cannot_be_whole_leaves_nothing(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    pod_id, pod = cp_env.pod("podrestore-bad-src")
    a = cp_env.run(pod_id, pod, "a", args=[COUNTER])
    checkpoint = out_dir / "podrestore-bad"
    checkpoint.mkdir()
    _checkpoint_pod(cp_env, pod_id, checkpoint, [a])
    cp_env.remove(a)
    before = {p.id for p in cp_env.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items}

    with pytest.raises(grpc.RpcError) as err:  # names that are not the checkpoint's
        _restore_pod(cp_env, checkpoint, _new_pod(cp_env, "podrestore-bad1"), ["a", "z"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    more_caps = api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(
            capabilities=api_pb2.Capability(add_capabilities=["SYS_ADMIN"])
        )
    )
    with pytest.raises(grpc.RpcError) as err:  # privileges the checkpoint did not have
        _restore_pod(
            cp_env, checkpoint, _new_pod(cp_env, "podrestore-bad2"), ["a"], linux=more_caps
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "process.capabilities" in str(err.value.details())
    after = {p.id for p in cp_env.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items}
    assert after == before  # the new pod went with its failure


def test_a_restore_made_before_a_kill_9_starts_after_it(
    cp_env: ContainerEnv, out_dir: Path
) -> None:
    """The unpacked checkpoint lives under criproxy's root and the record names it: a
    criproxy killed between CreateContainer and StartContainer restores all the same."""
    pod_id, pod = cp_env.pod("restore-kill-src")
    counter = cp_env.run(pod_id, pod, "counter", args=[COUNTER])
    wait_until(lambda: len(_counted(cp_env, counter)) > 20, 10)
    archive = out_dir / "restore-kill.tar"
    _checkpoint(cp_env, counter, str(archive))
    cp_env.remove(counter)
    new_pod, new_config = cp_env.pod("restore-kill-dst")
    restored = cp_env.create(new_pod, new_config, "counter", image=str(archive), args=[COUNTER])
    cp_env.pods.proxy.kill()
    cp_env.pods.proxy.start()
    assert cp_env.status(restored).status.state == api_pb2.CONTAINER_CREATED
    cp_env.start(restored)
    history = len(_counted(cp_env, restored))
    wait_until(lambda: len(_counted(cp_env, restored)) > history + 5, 15)
    assert _counted(cp_env, restored)[history] > 20  # counting on, not anew
    cp_env.remove(restored)


# --- restore from a checkpoint image (`checkpointctl build`'s shape) -------------------------


def _checkpoint_image(
    registry, repo: str, archive: Path, annotation: str, *, split: bool = False
) -> str:  # type: ignore[no-untyped-def]
    """An OCI image whose one layer holds the archive's files (as `checkpointctl build`
    makes it: the archive added to a scratch image), marked by `annotation`, pushed; with
    `split`, its files spread over two layers instead."""
    from tests.support.images import Layer, build_image

    tar = archive.read_bytes()
    layers = [Layer(tar), Layer(_tar_of({"extra": b"x"}))] if split else [Layer(tar)]
    image = build_image(layers, annotations={annotation: "counter"})
    registry.push(repo, image, "1")
    return str(registry.reference(repo, "1"))


def _tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _pull(env: ContainerEnv, ref: str) -> None:
    env.pods.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )


def _checkpoint_views(env: ContainerEnv) -> list[str]:
    listed = env.pods.ctr("snapshots", "ls").stdout.splitlines()
    return [line for line in listed if "-checkpoint " in line]


def test_a_checkpoint_image_restores_like_its_archive(
    cp_env: ContainerEnv, out_dir: Path, registry_http
) -> None:  # type: ignore[no-untyped-def]
    archive = _counter_archive(
        cp_env, out_dir, "for-image", before="echo kept > /root-note", counted=20
    )
    ref = _checkpoint_image(
        registry_http,
        "test/counter-checkpoint",
        archive,
        "io.kubernetes.cri-o.annotations.checkpoint.name",
    )
    _pull(cp_env, ref)  # the kubelet pulls it first, as any image

    new_pod, new_config = cp_env.pod("image-dst")
    restored = cp_env.create(new_pod, new_config, "counter", image=ref, args=[COUNTER])
    status = cp_env.status(restored, verbose=True)
    assert status.status.state == api_pb2.CONTAINER_CREATED
    assert status.status.image.image.endswith("test/busybox:1")  # the checkpointed image
    assert ref in json.dumps(cp_env.info(restored))  # named as what it was restored from
    assert _checkpoint_views(cp_env) == []  # read, and its view gone
    cp_env.start(restored)
    _counts_on(cp_env, restored)
    assert cp_env.exec(restored, "cat", "/root-note").stdout == b"kept\n"
    cp_env.stop(restored)
    cp_env.remove(restored)


def test_a_checkpoint_image_that_is_not_one_is_refused_with_nothing_left(
    cp_env: ContainerEnv, out_dir: Path, registry_http
) -> None:  # type: ignore[no-untyped-def]
    archive = _counter_archive(cp_env, out_dir, "image-bad")
    unsigned = _rewritten(
        archive, out_dir / "unsigned.tar", lambda member, _: member.name != "criproxy.sig"
    )
    key = "checkpointctl.annotation.checkpoint.name"  # containerd's name for it
    cases = [
        (
            _checkpoint_image(registry_http, "test/ck-split", archive, key, split=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "has 2 layers",
        ),
        (
            _checkpoint_image(registry_http, "test/ck-unsigned", unsigned, key),
            grpc.StatusCode.FAILED_PRECONDITION,
            "is not signed",
        ),
    ]
    new_pod, new_config = cp_env.pod("image-bad-dst")
    for ref, code, says in cases:
        _pull(cp_env, ref)
        with pytest.raises(grpc.RpcError) as err:
            cp_env.create(new_pod, new_config, "counter", image=ref, args=[COUNTER])
        assert err.value.code() == code, ref
        assert f"checkpoint image {ref}" in str(err.value.details())
        assert says in str(err.value.details())
    listed = cp_env.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=new_pod))
    ).containers
    assert list(listed) == []
    assert not list((cp_env.pods.proxy.root / "restores").glob("*"))
    assert _checkpoint_views(cp_env) == []
