"""NRI's ownership rules when several plugins adjust one container, and the merged
adjustment applied to an OCI spec."""

from __future__ import annotations

from typing import Any

import pytest

from criproxy._generated.nri import api_pb2 as nri
from criproxy.nri.adaptation import Owners, PluginError, apply, merge


def _container() -> nri.Container:
    return nri.Container(id="c1", env=["PATH=/bin", "FROM_IMAGE=1"], annotations={"kept": "1"})


def _env(*pairs: tuple[str, str]) -> nri.ContainerAdjustment:
    return nri.ContainerAdjustment(env=[nri.KeyValue(key=k, value=v) for k, v in pairs])


def _run(
    *adjustments: tuple[str, nri.ContainerAdjustment],
) -> tuple[nri.ContainerAdjustment, nri.Container]:
    merged, container, owners = nri.ContainerAdjustment(), _container(), Owners()
    for plugin, adjust in adjustments:
        merge(merged, container, adjust, plugin, owners)
    return merged, container


def test_removing_what_only_the_container_had_claims_nothing() -> None:
    merged, container = _run(
        ("10-a", _env(("-FROM_IMAGE", ""))), ("20-b", _env(("FROM_IMAGE", "b")))
    )
    assert "FROM_IMAGE=b" in container.env
    assert [(e.key, e.value) for e in merged.env] == [("FROM_IMAGE", "b")]


def test_setting_what_another_plugin_set_conflicts() -> None:
    with pytest.raises(PluginError, match="'20-b' and '10-a' both tried to set Env X"):
        _run(("10-a", _env(("X", "a"))), ("20-b", _env(("X", "b"))))


def test_a_plugin_that_removed_another_ones_value_may_set_it_but_no_third_may() -> None:
    merged, container = _run(("10-a", _env(("X", "a"))), ("20-b", _env(("-X", ""), ("X", "b"))))
    assert "X=b" in container.env and "X=a" not in container.env
    assert [(e.key, e.value) for e in merged.env] == [("X", "b")]
    with pytest.raises(PluginError, match="'30-c' and '20-b'"):
        _run(("10-a", _env(("X", "a"))), ("20-b", _env(("-X", ""))), ("30-c", _env(("X", "c"))))


def test_a_later_plugin_sees_the_earlier_ones_work() -> None:
    annotate = nri.ContainerAdjustment(annotations={"a": "1", "-kept": ""})
    _, container = _run(("10-a", annotate))
    assert dict(container.annotations) == {"a": "1"}


def test_hooks_accumulate_and_rlimits_conflict_by_type() -> None:
    hook = nri.ContainerAdjustment(hooks=nri.Hooks(prestart=[nri.Hook(path="/bin/true")]))
    merged, _ = _run(("10-a", hook), ("20-b", hook))
    assert len(merged.hooks.prestart) == 2
    nofile = nri.ContainerAdjustment(
        rlimits=[nri.POSIXRlimit(type="RLIMIT_NOFILE", hard=2, soft=1)]
    )
    core = nri.ContainerAdjustment(rlimits=[nri.POSIXRlimit(type="RLIMIT_CORE", hard=2, soft=1)])
    _run(("10-a", nofile), ("20-b", core))
    with pytest.raises(PluginError, match="Rlimits RLIMIT_NOFILE"):
        _run(("10-a", nofile), ("20-b", nofile))


@pytest.mark.parametrize(
    ("adjust", "named"),
    [
        (
            nri.ContainerAdjustment(
                linux=nri.LinuxContainerAdjustment(
                    resources=nri.LinuxResources(blockio_class=nri.OptionalString(value="gold"))
                )
            ),
            "block I/O class",
        ),
        (
            nri.ContainerAdjustment(
                linux=nri.LinuxContainerAdjustment(
                    seccomp_policy=nri.LinuxSeccomp(default_action="SCMP_ACT_ALLOW")
                )
            ),
            "a seccomp profile",
        ),
        (
            nri.ContainerAdjustment(linux=nri.LinuxContainerAdjustment(cgroups_path="/x")),
            "a cgroup path",
        ),
    ],
)
def test_what_criproxy_cannot_apply_is_refused(adjust: nri.ContainerAdjustment, named: str) -> None:
    with pytest.raises(PluginError, match=named):
        _run(("10-a", adjust))


def test_the_merged_adjustment_in_a_spec() -> None:
    spec: dict[str, Any] = {
        "process": {"env": ["PATH=/bin", "GONE=1"], "args": ["sh"]},
        "mounts": [{"destination": "/data", "type": "bind", "source": "/old"}],
        "annotations": {"drop": "1"},
    }
    adjust = nri.ContainerAdjustment(
        env=[nri.KeyValue(key="-GONE"), nri.KeyValue(key="NEW", value="2")],
        annotations={"-drop": "", "add": "3"},
        mounts=[nri.Mount(destination="/data", type="bind", source="/new", options=["ro"])],
        rlimits=[nri.POSIXRlimit(type="RLIMIT_NOFILE", hard=9, soft=8)],
        linux=nri.LinuxContainerAdjustment(oom_score_adj=nri.OptionalInt(value=500)),
    )
    apply(spec, adjust)
    assert spec["process"]["env"] == ["PATH=/bin", "NEW=2"]
    assert spec["annotations"] == {"add": "3"}
    assert spec["mounts"] == [
        {"destination": "/data", "type": "bind", "source": "/new", "options": ["ro"]}
    ]
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 9, "soft": 8}]
    assert spec["process"]["oomScoreAdj"] == 500


def _limit(plugin_value: int) -> nri.ContainerAdjustment:
    memory = nri.LinuxMemory(limit=nri.OptionalInt64(value=plugin_value))
    return nri.ContainerAdjustment(
        linux=nri.LinuxContainerAdjustment(resources=nri.LinuxResources(memory=memory))
    )


def test_resources_are_owned_field_by_field() -> None:
    cpu = nri.LinuxContainerAdjustment(
        resources=nri.LinuxResources(cpu=nri.LinuxCPU(cpus="0", shares=nri.OptionalUInt64(value=5)))
    )
    merged, container = _run(
        ("10-a", _limit(1 << 20)), ("20-b", nri.ContainerAdjustment(linux=cpu))
    )
    assert merged.linux.resources.memory.limit.value == 1 << 20
    assert merged.linux.resources.cpu.cpus == "0"
    assert container.linux.resources.memory.limit.value == 1 << 20, "the next plugin sees it"
    with pytest.raises(PluginError, match="Memory limit"):
        _run(("10-a", _limit(1 << 20)), ("20-b", _limit(2 << 20)))


def test_the_linux_adjustment_in_a_spec() -> None:
    spec: dict[str, Any] = {
        "process": {},
        "linux": {
            "resources": {
                "memory": {"limit": 100},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "namespaces": [{"type": "ipc"}, {"type": "uts"}],
        },
    }
    adjust = nri.LinuxContainerAdjustment(
        devices=[
            nri.LinuxDevice(
                path="/dev/x",
                type="c",
                major=1,
                minor=3,
                file_mode=nri.OptionalFileMode(value=0o666),
            )
        ],
        resources=nri.LinuxResources(
            memory=nri.LinuxMemory(limit=nri.OptionalInt64(value=200)),
            pids=nri.LinuxPids(limit=64),
            unified={"memory.high": "150"},
        ),
        sysctl={"net.ipv4.ip_forward": "1"},
        namespaces=[nri.LinuxNamespace(type="-uts")],
        oom_score_adj=nri.OptionalInt(value=10),
    )
    from criproxy.nri.linux import apply_linux

    apply_linux(spec, adjust)
    linux = spec["linux"]
    assert linux["devices"] == [
        {"path": "/dev/x", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666}
    ]
    assert linux["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": 1,
        "minor": 3,
        "access": "rwm",
    }
    assert linux["resources"]["memory"] == {"limit": 200}
    assert linux["resources"]["pids"] == {"limit": 64}
    assert linux["resources"]["unified"] == {"memory.high": "150"}
    assert linux["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert linux["namespaces"] == [{"type": "ipc"}]
    assert spec["process"]["oomScoreAdj"] == 10


def test_cdi_devices_are_merged_and_owned_by_name() -> None:
    def gpu(name: str) -> nri.ContainerAdjustment:
        return nri.ContainerAdjustment(CDI_devices=[nri.CDIDevice(name=name)])

    merged, _ = _run(("10-a", gpu("v.com/gpu=0")), ("20-b", gpu("v.com/gpu=1")))
    assert [d.name for d in merged.CDI_devices] == ["v.com/gpu=0", "v.com/gpu=1"]
    with pytest.raises(PluginError, match=r"CdiDevices v\.com/gpu=0"):
        _run(("10-a", gpu("v.com/gpu=0")), ("20-b", gpu("v.com/gpu=0")))
