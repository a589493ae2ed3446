"""A container's record survives the JSON round trip through containerd, field by field."""

from __future__ import annotations

import json

from criproxy.containers.model import Container, EffectiveUser, ImageInfo
from criproxy.oci.container import (
    ContainerConfig,
    ContainerResources,
    ContainerSecurity,
    DeviceConfig,
    HugepageLimit,
    MountConfig,
    UsernsConfig,
)
from criproxy.oci.spec import IdMapping


def _full() -> Container:
    config = ContainerConfig(
        name="app",
        attempt=2,
        image="busybox",
        command=("/bin/sh",),
        args=("-c", "true"),
        working_dir="/w",
        envs=(("A", "1"), ("B", "")),
        mounts=(
            MountConfig("/data", "/host", readonly=True, propagation="rslave"),
            MountConfig(
                "/m", "/h", uid_mappings=(IdMapping(0, 1000, 10),), recursive_read_only=True
            ),
        ),
        devices=(DeviceConfig("/dev/x", "/dev/null", "rw"),),
        labels={"l": "v"},
        annotations={"a": "b"},
        log_path="app/0.log",
        stdin=True,
        tty=True,
        resources=ContainerResources(
            cpu_quota=5000,
            memory_limit_in_bytes=1 << 20,
            hugepage_limits=(HugepageLimit("2MB", 4 << 20),),
            unified={"memory.high": "1000"},
        ),
        security=ContainerSecurity(
            add_capabilities=("CAP_NET_ADMIN",),
            run_as_user=1000,
            masked_paths=("/proc/kcore",),
            seccomp="runtime/default",
            userns=UsernsConfig((IdMapping(0, 100000, 65536),), (IdMapping(0, 100000, 65536),)),
        ),
        stop_signal="SIGQUIT",
    )
    return Container(
        id="c" * 64,
        sandbox_id="s" * 64,
        config=config,
        image=ImageInfo("sha256:1", "repo@sha256:2", "docker.io/library/busybox:latest"),
        created_at_ns=1,
        log_path="/logs/app/0.log",
        state="exited",
        exit_code=137,
        reason="OOMKilled",
        oom_killed=True,
        user=EffectiveUser(1000, 1000, (1000, 50)),
    )


def test_the_record_is_the_json_of_its_dataclass_fields() -> None:
    """Byte for byte what records written before the encoder without deep copies held."""
    import dataclasses
    import json

    record = _full()
    assert record.to_json() == json.dumps(dataclasses.asdict(record), sort_keys=True).encode()


def test_every_field_survives_the_round_trip() -> None:
    container = _full()
    assert Container.from_json(container.to_json()) == container


def test_unknown_keys_are_ignored_and_missing_ones_default() -> None:
    data = json.loads(_full().to_json())
    data["from_the_future"] = 1
    data["config"]["security"]["new_knob"] = True
    del data["reason"]
    restored = Container.from_json(json.dumps(data).encode())
    assert restored.reason == ""
    assert restored.config.security.run_as_user == 1000
