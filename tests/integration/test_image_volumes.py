"""Image volumes (CRI `Mount.image`) over a real containerd, runc and registry: an image
mounted read-only into a container, whole or at a sub path, and gone with it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import wait_until
from tests.support.images import LayerBuilder, build_image, busybox_layer

MOUNT = "/mnt/volume"


@pytest.fixture(scope="module")
def data_image(ctr_env: ContainerEnv, registry_http) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A two-layer image (busybox, then data with a link to /etc), pulled: its reference
    and image id."""
    data = (
        LayerBuilder()
        .file("data/a.txt", b"from the image\n")
        .file("etc/marker", b"the image's /etc\n")
        .symlink("data/etc", "/etc")  # absolute: inside the image, never the host's
        .symlink("data/out", "../../../../../etc")
        .whiteout("bin/true")
        .build("data")
    )
    image = build_image([busybox_layer(), data])
    registry_http.push("test/data", image, "1")
    ref = str(registry_http.reference("test/data", "1"))
    pulled = ctr_env.pods.proxy.images.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120
    )
    yield ref, pulled.image_ref


def _volume(
    ref: str, sub_path: str = "", *, readonly: bool = True, path: str = MOUNT
) -> api_pb2.Mount:
    return api_pb2.Mount(
        container_path=path,
        readonly=readonly,
        image=api_pb2.ImageSpec(image=ref),
        image_sub_path=sub_path,
    )


def _mounted(env: ContainerEnv, container_id: str) -> list[str]:
    root = env.pods.proxy.state / "image-volumes" / container_id
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if f" {root}/" in line]


def _views(env: ContainerEnv, container_id: str) -> list[str]:
    listed = env.pods.ctr("snapshots", "ls").stdout.splitlines()
    return [line for line in listed if line.startswith(f"{container_id}-image-volume-")]


def _gone(env: ContainerEnv, container_id: str) -> None:
    """A removed container's volumes: unmounted, their views and directory removed (just
    after RemoveContainer's answer, with the rest of its leftovers)."""
    wait_until(lambda: not _mounted(env, container_id) and not _views(env, container_id), 10)
    assert not (env.pods.proxy.state / "image-volumes" / container_id).exists()


def test_an_image_volume_is_the_image_read_only_and_goes_with_the_container(
    ctr_env: ContainerEnv, data_image: tuple[str, str]
) -> None:
    ref, image_id = data_image
    pod_id, pod = ctr_env.pod("iv-whole")
    container = ctr_env.run(
        pod_id, pod, "reader", args=["sleep 1000"], mounts=[_volume(ref, path=MOUNT)]
    )
    assert ctr_env.exec(container, "cat", f"{MOUNT}/data/a.txt").stdout == b"from the image\n"
    # a binary of the image runs from it: not noexec
    assert ctr_env.exec(container, f"{MOUNT}/bin/busybox", "true").exit_code == 0
    assert ctr_env.exec(container, "test", "-e", f"{MOUNT}/bin/true").exit_code == 1  # whiteout
    written = ctr_env.exec(container, "touch", f"{MOUNT}/new")
    assert written.exit_code != 0
    assert b"Read-only file system" in written.stderr
    mounts = ctr_env.status(container).status.mounts
    (volume,) = [m for m in mounts if m.container_path == MOUNT]
    assert volume.image.image == ref
    assert volume.image.image_ref == image_id  # what PullImage answered
    assert volume.readonly

    assert len(_mounted(ctr_env, container)) == 1
    assert len(_views(ctr_env, container)) == 1
    ctr_env.stop(container)
    ctr_env.remove(container)
    _gone(ctr_env, container)


def test_a_sub_path_is_resolved_inside_the_image(
    ctr_env: ContainerEnv, data_image: tuple[str, str]
) -> None:
    ref, _ = data_image
    pod_id, pod = ctr_env.pod("iv-sub")
    mounts = [
        _volume(ref, "data", path="/mnt/data"),
        _volume(ref, "data/etc", path="/mnt/etc"),  # a link to /etc: the image's
        _volume(ref, "data/out", path="/mnt/out"),  # ../ past the root: still the image's
    ]
    container = ctr_env.run(pod_id, pod, "reader", args=["sleep 1000"], mounts=mounts)
    assert ctr_env.exec(container, "cat", "/mnt/data/a.txt").stdout == b"from the image\n"
    for where in ("/mnt/etc", "/mnt/out"):
        marker = ctr_env.exec(container, "cat", f"{where}/marker")
        assert marker.stdout == b"the image's /etc\n", where
    assert not Path("/etc/marker").exists()
    ctr_env.remove(container)


def test_image_volumes_that_cannot_be_made_are_refused_with_nothing_left(
    ctr_env: ContainerEnv, data_image: tuple[str, str]
) -> None:
    ref, _ = data_image
    pod_id, pod = ctr_env.pod("iv-refused")
    cases = [
        (_volume(ref, "not-there"), grpc.StatusCode.INVALID_ARGUMENT, "does not exist"),
        (_volume(ref, readonly=False), grpc.StatusCode.INVALID_ARGUMENT, "must be read-only"),
        (_volume(f"{ref}-never-pulled"), grpc.StatusCode.NOT_FOUND, "pull it first"),
    ]
    for mount, code, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            ctr_env.create(pod_id, pod, "refused", args=["true"], mounts=[mount])
        assert err.value.code() == code, mount
        assert says in str(err.value.details())
        assert MOUNT in str(err.value.details())
    root = ctr_env.pods.proxy.state / "image-volumes"
    assert not root.exists() or list(root.iterdir()) == []
    listed = ctr_env.pods.ctr("snapshots", "ls").stdout
    assert "-image-volume-" not in listed
    # and the name is free: the same container made right is made
    made = ctr_env.create(pod_id, pod, "refused", args=["true"], mounts=[_volume(ref)])
    ctr_env.remove(made)


def test_the_image_stays_under_a_running_volume_after_its_removal(
    ctr_env: ContainerEnv, registry_http
) -> None:  # type: ignore[no-untyped-def]
    image = build_image([LayerBuilder().file("only/file", b"kept\n").build("one layer")])
    registry_http.push("test/short-lived", image, "1")
    ref = str(registry_http.reference("test/short-lived", "1"))
    images = ctr_env.pods.proxy.images
    images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    pod_id, pod = ctr_env.pod("iv-kept")
    container = ctr_env.run(pod_id, pod, "reader", args=["sleep 1000"], mounts=[_volume(ref)])
    images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))
    ctr_env.pods.ctr("content", "prune", "references")  # and a GC pass
    assert ctr_env.exec(container, "cat", f"{MOUNT}/only/file").stdout == b"kept\n"
    ctr_env.remove(container)


def test_image_volumes_across_a_kill_9_and_a_lost_mount(
    ctr_env: ContainerEnv, data_image: tuple[str, str]
) -> None:
    """A created container whose volume's host mount went (as a host reboot takes the
    state dir's) mounts it again at its start, also after criproxy was killed; a
    container whose record went while criproxy was down leaves no mount behind."""
    ref, _ = data_image
    pod_id, pod = ctr_env.pod("iv-kill")
    created = ctr_env.create(pod_id, pod, "later", args=["sleep 1000"], mounts=[_volume(ref)])
    orphan = ctr_env.create(pod_id, pod, "orphan", args=["sleep 1000"], mounts=[_volume(ref)])
    proxy = ctr_env.pods.proxy
    proxy.kill()
    target = proxy.state / "image-volumes" / created / "0"
    subprocess.run(["umount", str(target)], check=True)
    ctr_env.pods.ctr("containers", "delete", orphan)  # its removal, cut short after the record
    proxy.start()
    assert _mounted(ctr_env, orphan) == []
    assert not (proxy.state / "image-volumes" / orphan).exists()
    ctr_env.start(created)
    assert ctr_env.exec(created, "cat", f"{MOUNT}/data/a.txt").stdout == b"from the image\n"
    ctr_env.remove(created)
    _gone(ctr_env, created)
