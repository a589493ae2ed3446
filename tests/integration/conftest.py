from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import (
    ContainerdProcess,
    Criproxy,
    requirements_missing,
    write_bridge_conflist,
)
from tests.integration.images_env import ImageEnv
from tests.integration.pods_env import BRIDGE, PodEnv, write_pod_network

_missing = requirements_missing()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not _missing:
        return
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=_missing))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private dir: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cpx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_containerd() -> Iterator[ContainerdProcess]:
    """One containerd for the tests that only read from it."""
    base = Path(tempfile.mkdtemp(prefix="cpx-ctd-", dir="/tmp"))
    ctd = ContainerdProcess(base)
    ctd.start()
    yield ctd
    ctd.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def containerd(short_tmp: Path) -> Iterator[ContainerdProcess]:
    """A containerd of this test's own, which the test may stop and start."""
    ctd = ContainerdProcess(short_tmp / "ctd")
    ctd.start()
    yield ctd
    ctd.stop()


@pytest.fixture
def criproxy(short_tmp: Path, shared_containerd: ContainerdProcess) -> Iterator[Criproxy]:
    """criproxy on the shared containerd, with a CNI config present."""
    proxy = Criproxy(short_tmp / "cpx", containerd=shared_containerd.socket)
    write_bridge_conflist(proxy.cni_dir)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def image_env() -> Iterator[ImageEnv]:
    """A containerd and a criproxy of the module's own, for image tests."""
    base = Path(tempfile.mkdtemp(prefix="cpx-img-", dir="/tmp"))
    ctd = ContainerdProcess(base / "ctd")
    ctd.start()
    certs_d = base / "certs.d"
    certs_d.mkdir()
    proxy = Criproxy(
        base / "cpx",
        containerd=ctd.socket,
        config={"registry": {"config_path": str(certs_d)}},
    )
    write_bridge_conflist(proxy.cni_dir)
    proxy.start()
    yield ImageEnv(ctd, proxy, certs_d)
    proxy.stop()
    ctd.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pod_env(registry_http) -> Iterator[PodEnv]:  # type: ignore[no-untyped-def]
    """criproxy with a pause image from a local registry and a bridge CNI network."""
    from tests.support.images import ImageConfig, busybox_image

    base = Path(tempfile.mkdtemp(prefix="cpx-pod-", dir="/tmp"))
    base.chmod(0o711)  # as /var/lib and /run: a pod's remapped root must reach its bundle
    pause = busybox_image(config=ImageConfig(entrypoint=("/bin/sleep",), cmd=("2147483647",)))
    registry_http.push("test/pause", pause, "3.10")
    certs_d = base / "certs.d"
    (certs_d / registry_http.host).mkdir(parents=True)
    (certs_d / registry_http.host / "hosts.toml").write_text(f'server = "{registry_http.url}"\n')
    ctd = ContainerdProcess(base / "ctd")
    ctd.start()
    proxy = Criproxy(
        base / "cpx",
        containerd=ctd.socket,
        config={
            "sandbox_image": registry_http.reference("test/pause", "3.10"),
            "registry": {"config_path": str(certs_d)},
        },
    )
    cni_data = base / "cni-data"
    write_pod_network(proxy.cni_dir, cni_data)
    proxy.start()
    env = PodEnv(ctd, proxy, cni_data)
    yield env
    env.cleanup()
    proxy.stop()
    ctd.stop()
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    if os.environ.get("CRIPROXY_KEEP_LOGS"):
        shutil.copytree(
            base,
            os.environ["CRIPROXY_KEEP_LOGS"],
            ignore=shutil.ignore_patterns("root", "state", "run"),
            dirs_exist_ok=True,
        )
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def ctr_env(pod_env: PodEnv, registry_http) -> Iterator[ContainerEnv]:  # type: ignore[no-untyped-def]
    """Containers in pods: the pods' criproxy with a busybox image (`sh -c` entrypoint)."""
    from tests.support.images import ImageConfig, busybox_image

    image = busybox_image(
        config=ImageConfig(
            env=("PATH=/bin:/usr/bin", "FROM_IMAGE=image", "OVERRIDE=image"),
            entrypoint=("/bin/sh", "-c"),
            cmd=("echo image-default",),
            working_dir="/tmp",
        )
    )
    registry_http.push("test/busybox", image, "1")
    ref = registry_http.reference("test/busybox", "1")
    pod_env.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )
    log_root = Path(tempfile.mkdtemp(prefix="cpx-logs-", dir="/tmp"))
    env = ContainerEnv(pod_env, ref, log_root)
    yield env
    env.cleanup()
    shutil.rmtree(log_root, ignore_errors=True)
