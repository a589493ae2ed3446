"""CDI devices named by CreateContainer (CDI_devices and the `cdi.k8s.io/` annotations),
resolved from criproxy's spec directories, in a container over a real containerd and runc."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.containers_env import ContainerEnv

SPEC = {
    "cdiVersion": "0.6.0",
    "kind": "test.example/dev",
    "containerEdits": {"env": ["FROM_SPEC=1"]},
    "devices": [
        {
            "name": "null",
            "containerEdits": {
                "env": ["CDI_DEVICE=null"],
                "deviceNodes": [{"path": "/dev/cdi-null", "hostPath": "/dev/null"}],
            },
        },
        {
            "name": "zero",
            "containerEdits": {"deviceNodes": [{"path": "/dev/cdi-zero", "hostPath": "/dev/zero"}]},
        },
    ],
}


@pytest.fixture(scope="module")
def cdi_env(ctr_env: ContainerEnv) -> ContainerEnv:
    spec_dir: Path = ctr_env.pods.proxy.base / "cdi"
    spec_dir.mkdir(exist_ok=True)
    (spec_dir / "test.json").write_text(json.dumps(SPEC))
    return ctr_env


def test_cdi_devices_of_the_request_and_its_annotations_are_in_the_container(
    cdi_env: ContainerEnv,
) -> None:
    pod_id, pod = cdi_env.pod("cdi")
    container = cdi_env.run(
        pod_id,
        pod,
        "c",
        args=["sleep 1000"],
        CDI_devices=[api_pb2.CDIDevice(name="test.example/dev=null")],
        annotations={"cdi.k8s.io/extra": "test.example/dev=zero"},
    )
    script = (
        "echo x > /dev/cdi-null && head -c 3 /dev/cdi-zero | wc -c && echo $CDI_DEVICE $FROM_SPEC"
    )
    out = cdi_env.exec(container, "sh", "-c", script)
    assert out.stdout.split() == [b"3", b"null", b"1"], out.stderr
    cdi_env.pods.stop(pod_id)
    cdi_env.pods.remove(pod_id)


def test_an_unknown_cdi_device_fails_the_create_and_leaves_nothing(cdi_env: ContainerEnv) -> None:
    pod_id, pod = cdi_env.pod("cdi-unknown")
    with pytest.raises(grpc.RpcError) as caught:
        cdi_env.create(
            pod_id, pod, "c", CDI_devices=[api_pb2.CDIDevice(name="test.example/dev=gpu9")]
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "test.example/dev=gpu9" in caught.value.details()
    listed = cdi_env.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert not [c for c in listed if c.pod_sandbox_id == pod_id]

    with pytest.raises(grpc.RpcError) as caught:
        cdi_env.create(pod_id, pod, "c", CDI_devices=[api_pb2.CDIDevice(name="no-kind")])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cdi_env.pods.stop(pod_id)
    cdi_env.pods.remove(pod_id)
