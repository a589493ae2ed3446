"""CRI container messages <-> the containers domain: every refusal names its field, every
enum converts both ways, and the views and List filters show what the domain holds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containers.model import Container, EffectiveUser, ImageInfo
from criproxy.cri.convert import container as container_cri
from criproxy.errors import InvalidArgument
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
from tests.unit.cri.fields import set_field

CTX = "config.linux.security_context"
NS = f"{CTX}.namespace_options"

Mutation = Callable[[api_pb2.ContainerConfig], Any]


def _config() -> api_pb2.ContainerConfig:
    """The least a container needs: a name and an image."""
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app", attempt=1),
        image=api_pb2.ImageSpec(image="busybox:1.36"),
    )


def _converted(*mutations: Mutation) -> ContainerConfig:
    config = _config()
    for mutate in mutations:
        mutate(config)
    return container_cri.container_config(config)


def _refusal(*mutations: Mutation) -> str:
    with pytest.raises(InvalidArgument) as err:
        _converted(*mutations)
    return err.value.message


def _mount(**fields: Any) -> Mutation:
    return lambda c: c.mounts.add(**{"container_path": "/data", "host_path": "/srv", **fields})


def _env(key: str, value: bytes) -> Mutation:
    return lambda c: c.envs.add(key=key, value=value)


def _device(**fields: str) -> Mutation:
    return lambda c: c.devices.add(**{"container_path": "/dev/x", "host_path": "/dev/y", **fields})


def _resources(**fields: int) -> Mutation:
    return lambda c: c.linux.resources.CopyFrom(api_pb2.LinuxContainerResources(**fields))


def _caps(**fields: list[str]) -> Mutation:
    return lambda c: c.linux.security_context.capabilities.CopyFrom(api_pb2.Capability(**fields))


def _ns(**fields: Any) -> Mutation:
    def mutate(c: api_pb2.ContainerConfig) -> None:
        for name, value in fields.items():
            setattr(c.linux.security_context.namespace_options, name, value)

    return mutate


def _profile(kind: str, profile_type: int, ref: str = "") -> Mutation:
    profile = api_pb2.SecurityProfile(profile_type=profile_type, localhost_ref=ref)
    return lambda c: getattr(c.linux.security_context, kind).CopyFrom(profile)


# --- container_config: every refusal ----------------------------------------------------


def test_metadata_is_required() -> None:
    config = api_pb2.ContainerConfig(image=api_pb2.ImageSpec(image="busybox"))
    with pytest.raises(InvalidArgument, match=r"^config\.metadata is required$"):
        container_cri.container_config(config)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        pytest.param(
            set_field("metadata.name", ""), "config.metadata.name is required", id="no-name"
        ),
        pytest.param(
            lambda c: c.ClearField("image"), "config.image.image is required", id="no-image"
        ),
        pytest.param(
            set_field("image.image", ""), "config.image.image is required", id="empty-image"
        ),
        pytest.param(
            set_field("log_path", "/var/log/app.log"),
            "config.log_path '/var/log/app.log' must stay inside the pod's log directory",
            id="absolute-log-path",
        ),
        pytest.param(
            set_field("log_path", ".."),
            "config.log_path '..' must stay inside the pod's log directory",
            id="log-path-parent",
        ),
        pytest.param(
            set_field("log_path", "app/../../x.log"),
            "config.log_path 'app/../../x.log' must stay inside the pod's log directory",
            id="log-path-escaping",
        ),
        pytest.param(_env("", b"x"), "config.envs[0].key is required", id="env-without-key"),
        pytest.param(
            lambda c: (_env("A", b"1")(c), _env("B", b"\xff")(c)),
            "config.envs[1] (B) is not UTF-8",
            id="env-not-utf8",
        ),
        pytest.param(
            _device(container_path=""),
            "config.devices[0] needs container_path and host_path",
            id="device-without-container-path",
        ),
        pytest.param(
            _device(host_path=""),
            "config.devices[0] needs container_path and host_path",
            id="device-without-host-path",
        ),
        pytest.param(
            _device(permissions="rwx"),
            "config.devices[0].permissions 'rwx' is not of r, w, m",
            id="device-permissions",
        ),
        pytest.param(
            set_field("stop_signal", 99), "config.stop_signal 99 is not a signal", id="stop-signal"
        ),
    ],
)
def test_container_fields_are_checked(mutation: Mutation, message: str) -> None:
    assert _refusal(mutation) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"container_path": ""}, "config.mounts[1].container_path is required"),
        ({"host_path": ""}, "config.mounts[1].host_path is required"),
        (
            {"host_path": "", "image": api_pb2.ImageSpec()},
            "config.mounts[1].host_path is required",
        ),
        ({"propagation": 9}, "config.mounts[1].propagation 9 is unknown"),
        (
            {"recursive_read_only": True},
            "config.mounts[1]: recursive_read_only needs readonly (mount '/data')",
        ),
        (
            {
                "recursive_read_only": True,
                "readonly": True,
                "propagation": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
            },
            "config.mounts[1]: recursive_read_only needs private propagation "
            "(mount '/data' has rslave)",
        ),
        (
            {"mount_options": ["noexec", "ro", "bind"]},
            "config.mounts[1].mount_options ['ro', 'bind'] not supported on mount '/data' "
            "(supported: noexec, nodev, nosuid)",
        ),
    ],
)
def test_mounts_are_checked(fields: dict[str, Any], message: str) -> None:
    assert _refusal(_mount(container_path="/ok"), _mount(**fields)) == message


@pytest.mark.parametrize(
    ("field", "value", "least"),
    [
        ("cpu_period", -1, 0),
        ("cpu_quota", -2, -1),
        ("cpu_shares", -1, 0),
        ("memory_limit_in_bytes", -1, 0),
    ],
)
def test_resources_are_checked(field: str, value: int, least: int) -> None:
    assert _refusal(_resources(**{field: value})) == (
        f"config.linux.resources.{field} {value} is less than {least}"
    )


def test_resources_of_an_update_name_the_update_field() -> None:
    with pytest.raises(InvalidArgument, match=r"^linux\.cpu_shares -5 is less than 0$"):
        container_cri.resources(api_pb2.LinuxContainerResources(cpu_shares=-5), "linux")


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("add_capabilities", "capabilities.add"),
        ("drop_capabilities", "capabilities.drop"),
        ("add_ambient_capabilities", "capabilities.add_ambient"),
    ],
)
@pytest.mark.parametrize("name", ["", "NET ADMIN", "CAP_CHOWN\n"])
def test_capability_names_are_checked(kind: str, field: str, name: str) -> None:
    assert _refusal(_caps(**{kind: ["CHOWN", name]})) == (
        f"{field}: {name!r} is not a capability name"
    )


@pytest.mark.parametrize("kind", ["network", "pid", "ipc"])
def test_a_namespace_mode_the_api_does_not_define_is_refused(kind: str) -> None:
    assert _refusal(_ns(**{kind: 9})) == f"{NS}.{kind} 9 is not a namespace mode"


def test_a_target_pid_namespace_needs_its_target() -> None:
    assert _refusal(_ns(pid=api_pb2.TARGET)) == (
        "namespace_options.target_id is required with pid mode TARGET"
    )


def test_user_namespace_options_are_checked_as_a_pods() -> None:
    def userns(c: api_pb2.ContainerConfig) -> None:
        options = c.linux.security_context.namespace_options.userns_options
        options.mode = api_pb2.POD
        options.uids.add(container_id=0, host_id=100000, length=65536)

    assert _refusal(userns) == (
        f"{NS}.userns_options.gids: exactly one mapping is supported, got 0"
    )


@pytest.mark.parametrize(
    ("kind", "legacy"), [("seccomp", "seccomp_profile_path"), ("apparmor", "apparmor_profile")]
)
def test_security_profiles_are_checked(kind: str, legacy: str) -> None:
    assert _refusal(_profile(kind, api_pb2.SecurityProfile.Localhost)) == (
        f"{CTX}.{kind}: a Localhost profile needs localhost_ref"
    )
    assert _refusal(_profile(kind, 5)) == f"{CTX}.{kind}.profile_type 5 is unknown"
    not_a_profile = "is not unconfined, runtime/default or localhost/<profile>"
    assert _refusal(set_field(f"linux.security_context.{legacy}", "my-profile")) == (
        f"{CTX}.{legacy} 'my-profile' {not_a_profile}"
    )
    # the legacy field is read beside an Unconfined profile, so it is checked there too
    unconfined_beside = _profile(kind, api_pb2.SecurityProfile.Unconfined)
    assert _refusal(unconfined_beside, set_field(f"linux.security_context.{legacy}", "x/y")) == (
        f"{CTX}.{legacy} 'x/y' {not_a_profile}"
    )


# --- container_config: what a valid request becomes -------------------------------------


def test_the_least_config() -> None:
    assert _converted() == ContainerConfig(
        name="app",
        attempt=1,
        image="busybox:1.36",
        security=ContainerSecurity(pid="pod", ipc="pod", network="pod"),
    )


def test_a_full_config_is_carried_over() -> None:
    config = _config()
    config.command.extend(["/bin/sh", "-c"])
    config.args.append("sleep 1")
    config.working_dir = "/work"
    config.envs.add(key="A", value="é".encode())
    config.envs.add(key="EMPTY", value=b"")
    config.mounts.add(
        container_path="/data",
        host_path="/srv/data",
        readonly=True,
        selinux_relabel=True,
        recursive_read_only=True,
        mount_options=["nosuid", "noexec", "nodev"],
        uidMappings=[api_pb2.IDMapping(container_id=0, host_id=1000, length=1)],
        gidMappings=[api_pb2.IDMapping(container_id=0, host_id=2000, length=1)],
    )
    config.mounts.add(
        container_path="/img", image=api_pb2.ImageSpec(image="data:1"), image_sub_path="sub"
    )
    config.devices.add(container_path="/dev/fuse", host_path="/dev/fuse")
    config.devices.add(container_path="/dev/a", host_path="/dev/b", permissions="r")
    config.labels["io.kubernetes.container.name"] = "app"
    config.annotations["note"] = "x"
    config.log_path = "app/0.log"
    config.stdin = config.stdin_once = config.tty = True
    config.stop_signal = api_pb2.SIGNAL_SIGQUIT
    config.linux.resources.CopyFrom(
        api_pb2.LinuxContainerResources(
            cpu_period=100000,
            cpu_quota=-1,
            cpu_shares=2,
            memory_limit_in_bytes=1 << 20,
            oom_score_adj=1000,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4 << 20)],
            unified={"memory.high": "max"},
            memory_swap_limit_in_bytes=2 << 20,
        )
    )
    ctx = config.linux.security_context
    ctx.capabilities.CopyFrom(
        api_pb2.Capability(
            add_capabilities=["net_admin", "CAP_SYS_TIME"],
            drop_capabilities=["all"],
            add_ambient_capabilities=["Net_Bind_Service"],
        )
    )
    ctx.privileged = True
    ctx.namespace_options.CopyFrom(
        api_pb2.NamespaceOption(
            network=api_pb2.NODE, pid=api_pb2.TARGET, ipc=api_pb2.POD, target_id="c0"
        )
    )
    ctx.run_as_user.value = 1000
    ctx.run_as_group.value = 3000
    ctx.run_as_username = "app"
    ctx.readonly_rootfs = True
    ctx.supplemental_groups.extend([4, 5])
    ctx.supplemental_groups_policy = api_pb2.Strict
    ctx.no_new_privs = True
    ctx.masked_paths.append("/proc/kcore")
    ctx.readonly_paths.append("/proc/sys")
    ctx.seccomp.CopyFrom(api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost))
    ctx.seccomp.localhost_ref = "/profiles/app.json"
    ctx.apparmor.CopyFrom(api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined))
    ctx.selinux_options.CopyFrom(api_pb2.SELinuxOption(user="u", role="r", type="t", level="s0"))

    assert container_cri.container_config(config) == ContainerConfig(
        name="app",
        attempt=1,
        image="busybox:1.36",
        command=("/bin/sh", "-c"),
        args=("sleep 1",),
        working_dir="/work",
        envs=(("A", "é"), ("EMPTY", "")),
        mounts=(
            MountConfig(
                container_path="/data",
                host_path="/srv/data",
                readonly=True,
                selinux_relabel=True,
                propagation="private",
                recursive_read_only=True,
                uid_mappings=(IdMapping(0, 1000, 1),),
                gid_mappings=(IdMapping(0, 2000, 1),),
                options=("nosuid", "noexec", "nodev"),
            ),
            MountConfig(container_path="/img", host_path="", image="data:1", image_sub_path="sub"),
        ),
        devices=(
            DeviceConfig("/dev/fuse", "/dev/fuse", "rwm"),
            DeviceConfig("/dev/a", "/dev/b", "r"),
        ),
        labels={"io.kubernetes.container.name": "app"},
        annotations={"note": "x"},
        log_path="app/0.log",
        stdin=True,
        stdin_once=True,
        tty=True,
        resources=ContainerResources(
            cpu_period=100000,
            cpu_quota=-1,
            cpu_shares=2,
            memory_limit_in_bytes=1 << 20,
            oom_score_adj=1000,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            hugepage_limits=(HugepageLimit("2MB", 4 << 20),),
            unified={"memory.high": "max"},
            memory_swap_limit_in_bytes=2 << 20,
        ),
        security=ContainerSecurity(
            privileged=True,
            add_capabilities=("CAP_NET_ADMIN", "CAP_SYS_TIME"),
            drop_capabilities=("ALL",),
            add_ambient_capabilities=("CAP_NET_BIND_SERVICE",),
            run_as_user=1000,
            run_as_group=3000,
            run_as_username="app",
            readonly_rootfs=True,
            supplemental_groups=(4, 5),
            supplemental_groups_policy="strict",
            no_new_privs=True,
            masked_paths=("/proc/kcore",),
            readonly_paths=("/proc/sys",),
            seccomp="localhost//profiles/app.json",
            apparmor="unconfined",
            selinux_process_label="u:r:t:s0",
            pid="target",
            target_id="c0",
            ipc="pod",
            network="node",
        ),
        stop_signal="SIGQUIT",
    )


@pytest.mark.parametrize("log_path", ["", "0.log", "app/0.log", "./a/../0.log"])
def test_log_paths_inside_the_pod_directory_are_kept(log_path: str) -> None:
    assert _converted(set_field("log_path", log_path)).log_path == log_path


@pytest.mark.parametrize("permissions", ["r", "w", "m", "rw", "rwm", "mwr"])
def test_device_permissions_of_r_w_m(permissions: str) -> None:
    (device,) = _converted(_device(permissions=permissions)).devices
    assert device.permissions == permissions


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (api_pb2.PROPAGATION_PRIVATE, "private"),
        (api_pb2.PROPAGATION_HOST_TO_CONTAINER, "rslave"),
        (api_pb2.PROPAGATION_BIDIRECTIONAL, "rshared"),
    ],
)
def test_each_mount_propagation_converts_both_ways(value: int, name: str) -> None:
    (mount,) = _converted(_mount(propagation=value)).mounts
    assert mount.propagation == name
    container = _container(config=ContainerConfig(name="app", mounts=(mount,)))
    (view,) = container_cri.to_status(container).mounts
    assert view.propagation == value


def test_no_resources_given_is_none() -> None:
    assert _converted().resources is None
    assert _converted(_resources()).resources == ContainerResources()


@pytest.mark.parametrize(
    ("value", "policy"), [(api_pb2.Merge, "merge"), (api_pb2.Strict, "strict")]
)
def test_each_supplemental_groups_policy_converts(value: int, policy: str) -> None:
    converted = _converted(set_field("linux.security_context.supplemental_groups_policy", value))
    assert converted.security.supplemental_groups_policy == policy


@pytest.mark.parametrize(
    ("number", "mode"),
    [
        (api_pb2.POD, "pod"),
        (api_pb2.CONTAINER, "container"),
        (api_pb2.NODE, "node"),
    ],
)
def test_each_namespace_mode_converts(number: int, mode: str) -> None:
    security = _converted(_ns(network=number, pid=number, ipc=number)).security
    assert (security.network, security.pid, security.ipc) == (mode, mode, mode)


def test_a_container_user_namespace_keeps_its_mappings() -> None:
    def userns(c: api_pb2.ContainerConfig) -> None:
        options = c.linux.security_context.namespace_options.userns_options
        options.mode = api_pb2.POD
        options.uids.add(container_id=0, host_id=100000, length=65536)
        options.gids.add(container_id=0, host_id=100000, length=65536)

    assert _converted(userns).security.userns == UsernsConfig(
        (IdMapping(0, 100000, 65536),), (IdMapping(0, 100000, 65536),)
    )


@pytest.mark.parametrize(
    ("kind", "legacy"), [("seccomp", "seccomp_profile_path"), ("apparmor", "apparmor_profile")]
)
@pytest.mark.parametrize(
    ("profile", "legacy_value", "expected"),
    [
        pytest.param(None, "", "", id="unset"),
        pytest.param(None, "runtime/default", "runtime/default", id="legacy-runtime-default"),
        pytest.param(None, "docker/default", "runtime/default", id="legacy-docker-default"),
        pytest.param(None, "unconfined", "unconfined", id="legacy-unconfined"),
        pytest.param(None, "localhost/p", "localhost/p", id="legacy-localhost"),
        pytest.param(api_pb2.SecurityProfile.RuntimeDefault, "", "runtime/default", id="default"),
        pytest.param(api_pb2.SecurityProfile.Unconfined, "", "unconfined", id="unconfined"),
        pytest.param(
            api_pb2.SecurityProfile.Unconfined,
            "localhost/p",
            "localhost/p",
            id="unconfined-beside-legacy",
        ),
        pytest.param(
            api_pb2.SecurityProfile.RuntimeDefault,
            "localhost/p",
            "runtime/default",
            id="default-wins-over-legacy",
        ),
    ],
)
def test_security_profiles_convert(
    kind: str, legacy: str, profile: int | None, legacy_value: str, expected: str
) -> None:
    mutations: list[Mutation] = [set_field(f"linux.security_context.{legacy}", legacy_value)]
    if profile is not None:
        mutations.append(_profile(kind, profile))
    assert getattr(_converted(*mutations).security, kind) == expected


@pytest.mark.parametrize("kind", ["seccomp", "apparmor"])
def test_a_localhost_profile_names_its_ref(kind: str) -> None:
    converted = _converted(_profile(kind, api_pb2.SecurityProfile.Localhost, "k8s-app"))
    assert getattr(converted.security, kind) == "localhost/k8s-app"


SIGNALS = [name for name in api_pb2.Signal.keys() if name != "SIGNAL_RUNTIME_DEFAULT"]  # noqa: SIM118


@pytest.mark.parametrize("name", SIGNALS)
def test_each_stop_signal_converts_both_ways(name: str) -> None:
    """A container keeps the signal's own name (as records of every version do); CRI's
    value is that name with the `SIGNAL_` prefix."""
    value = api_pb2.Signal.Value(name)
    kept = name.removeprefix("SIGNAL_")
    assert kept.startswith("SIG")
    assert _converted(set_field("stop_signal", value)).stop_signal == kept
    assert container_cri.to_status(_container(stop_signal=kept)).stop_signal == value


def test_the_runtime_default_stop_signal_is_none_given() -> None:
    assert _converted(set_field("stop_signal", api_pb2.SIGNAL_RUNTIME_DEFAULT)).stop_signal == ""
    for unnamed in ("", "SIGRTMIN+3"):
        status = container_cri.to_status(_container(stop_signal=unnamed))
        assert status.stop_signal == api_pb2.SIGNAL_RUNTIME_DEFAULT


# --- views out --------------------------------------------------------------------------

IMAGE = ImageInfo(
    id="sha256:" + "c" * 64,
    ref="docker.io/library/busybox@sha256:" + "d" * 64,
    name="docker.io/library/busybox:1.36",
)


def _container(**changes: Any) -> Container:
    config = ContainerConfig(
        name="app",
        attempt=3,
        image="busybox:1.36",
        labels={"app": "web", "tier": "front"},
        annotations={"note": "x"},
    )
    container = Container(
        id="9a8b7c6d",
        sandbox_id="4f3e2d1c",
        config=config,
        image=IMAGE,
        created_at_ns=100,
        log_path="/var/log/pods/p/app/3.log",
        state="running",
        pid=77,
        started_at_ns=200,
        finished_at_ns=300,
    )
    return container.with_changes(**changes)


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ("created", api_pb2.CONTAINER_CREATED),
        ("running", api_pb2.CONTAINER_RUNNING),
        ("exited", api_pb2.CONTAINER_EXITED),
        ("unknown", api_pb2.CONTAINER_UNKNOWN),
    ],
)
def test_each_container_state_converts(state: str, value: int) -> None:
    container = _container(state=state)
    assert container_cri.to_container(container).state == value
    assert container_cri.to_status(container).state == value


def test_to_container() -> None:
    assert container_cri.to_container(_container()) == api_pb2.Container(
        id="9a8b7c6d",
        pod_sandbox_id="4f3e2d1c",
        metadata=api_pb2.ContainerMetadata(name="app", attempt=3),
        image=api_pb2.ImageSpec(image="busybox:1.36", user_specified_image="busybox:1.36"),
        image_ref=IMAGE.id,
        state=api_pb2.CONTAINER_RUNNING,
        created_at=100,
        labels={"app": "web", "tier": "front"},
        annotations={"note": "x"},
        image_id=IMAGE.id,
    )


def test_to_status() -> None:
    mount = MountConfig(
        container_path="/data",
        host_path="/srv",
        readonly=True,
        selinux_relabel=True,
        propagation="rshared",
        uid_mappings=(IdMapping(0, 1000, 1),),
        gid_mappings=(IdMapping(0, 2000, 2),),
        options=("noexec",),
    )
    image_mount = MountConfig(
        container_path="/img", host_path="", image="data:1", image_sub_path="sub"
    )
    resources = ContainerResources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=1 << 20,
        oom_score_adj=-997,
        cpuset_cpus="0",
        cpuset_mems="0",
        hugepage_limits=(HugepageLimit("1GB", 1 << 30),),
        unified={"pids.max": "10"},
        memory_swap_limit_in_bytes=1 << 21,
    )
    container = _container(
        config=ContainerConfig(
            name="app",
            attempt=3,
            image="busybox:1.36",
            labels={"app": "web"},
            mounts=(mount, image_mount),
            resources=resources,
        ),
        state="exited",
        exit_code=137,
        reason="OOMKilled",
        message="out of memory",
        user=EffectiveUser(1000, 1000, (1000, 5)),
        stop_signal="SIGINT",
    )
    assert container_cri.to_status(container) == api_pb2.ContainerStatus(
        id="9a8b7c6d",
        metadata=api_pb2.ContainerMetadata(name="app", attempt=3),
        state=api_pb2.CONTAINER_EXITED,
        created_at=100,
        started_at=200,
        finished_at=300,
        exit_code=137,
        image=api_pb2.ImageSpec(image=IMAGE.name, user_specified_image="busybox:1.36"),
        image_ref=IMAGE.ref,
        image_id=IMAGE.id,
        reason="OOMKilled",
        message="out of memory",
        labels={"app": "web"},
        mounts=[
            api_pb2.Mount(
                container_path="/data",
                host_path="/srv",
                readonly=True,
                selinux_relabel=True,
                propagation=api_pb2.PROPAGATION_BIDIRECTIONAL,
                uidMappings=[api_pb2.IDMapping(container_id=0, host_id=1000, length=1)],
                gidMappings=[api_pb2.IDMapping(container_id=0, host_id=2000, length=2)],
                mount_options=["noexec"],
            ),
            api_pb2.Mount(
                container_path="/img", image=api_pb2.ImageSpec(image="data:1"), image_sub_path="sub"
            ),
        ],
        log_path="/var/log/pods/p/app/3.log",
        resources=api_pb2.ContainerResources(
            linux=api_pb2.LinuxContainerResources(
                cpu_period=100000,
                cpu_quota=50000,
                cpu_shares=512,
                memory_limit_in_bytes=1 << 20,
                oom_score_adj=-997,
                cpuset_cpus="0",
                cpuset_mems="0",
                hugepage_limits=[api_pb2.HugepageLimit(page_size="1GB", limit=1 << 30)],
                unified={"pids.max": "10"},
                memory_swap_limit_in_bytes=1 << 21,
            )
        ),
        user=api_pb2.ContainerUser(
            linux=api_pb2.LinuxContainerUser(uid=1000, gid=1000, supplemental_groups=[1000, 5])
        ),
        stop_signal=api_pb2.SIGNAL_SIGINT,
    )


def test_a_status_without_resources_or_user_leaves_them_unset() -> None:
    status = container_cri.to_status(_container())
    assert not status.HasField("resources")
    assert not status.HasField("user")
    assert list(status.mounts) == []


@pytest.mark.parametrize(
    ("state", "started", "finished"),
    [("created", 0, 0), ("running", 200, 0), ("exited", 200, 300), ("unknown", 200, 300)],
)
def test_the_times_a_state_shows(state: str, started: int, finished: int) -> None:
    status = container_cri.to_status(_container(state=state))
    assert (status.created_at, status.started_at, status.finished_at) == (100, started, finished)


@pytest.mark.parametrize(
    ("state", "exit_code", "reason", "shown"),
    [
        ("exited", 0, "", "Completed"),
        ("exited", 1, "", "Error"),
        ("exited", 137, "OOMKilled", "OOMKilled"),
        ("exited", 0, "ContainerCannotRun", "ContainerCannotRun"),
        ("running", 0, "", ""),
        ("created", 0, "", ""),
        ("unknown", 0, "", ""),
        ("unknown", 255, "Unknown", "Unknown"),
    ],
)
def test_the_reason_a_status_gives(state: str, exit_code: int, reason: str, shown: str) -> None:
    container = _container(state=state, exit_code=exit_code, reason=reason)
    assert container_cri.to_status(container).reason == shown


def test_verbose_info_has_containerds_keys() -> None:
    container = _container()
    spec = {"ociVersion": "1.2.0"}
    info = container_cri.verbose_info(
        container,
        spec,
        "io.containerd.runc.v2",
        snapshotter="overlayfs",
        runtime_options={"SystemdCgroup": True},
    )
    assert list(info) == ["info"]
    assert json.loads(info["info"]) == {
        "sandboxID": "4f3e2d1c",
        "pid": 77,
        "removing": False,
        "snapshotKey": "9a8b7c6d",
        "runtimeType": "io.containerd.runc.v2",
        "config": json.loads(json.dumps(dataclasses.asdict(container.config))),
        "runtimeSpec": spec,
        "snapshotter": "overlayfs",
        "runtimeOptions": {"SystemdCgroup": True},
    }


def test_verbose_info_defaults() -> None:
    info = json.loads(container_cri.verbose_info(_container(), None, "")["info"])
    assert (info["runtimeSpec"], info["snapshotter"], info["runtimeOptions"]) == (None, "", None)
    assert info["config"]["name"] == "app"


# --- List filters -----------------------------------------------------------------------


def _filter(**fields: Any) -> api_pb2.ContainerFilter:
    return api_pb2.ContainerFilter(**fields)


def _state(value: int) -> api_pb2.ContainerStateValue:
    return api_pb2.ContainerStateValue(state=value)


@pytest.mark.parametrize(
    ("flt", "resolved_id", "expected"),
    [
        pytest.param(_filter(), "", True, id="empty"),
        pytest.param(_filter(id="9a"), "9a8b7c6d", True, id="id-prefix-resolved-to-it"),
        pytest.param(_filter(id="9a"), "9a000000", False, id="id-resolved-to-another"),
        pytest.param(_filter(id="9a"), "", False, id="id-resolved-to-nothing"),
        pytest.param(_filter(pod_sandbox_id="4f3e2d1c"), "", True, id="pod-id"),
        pytest.param(_filter(pod_sandbox_id="4f3e"), "", True, id="pod-id-prefix"),
        pytest.param(_filter(pod_sandbox_id="4f3f"), "", False, id="another-pod"),
        pytest.param(_filter(state=_state(api_pb2.CONTAINER_RUNNING)), "", True, id="running"),
        pytest.param(_filter(state=_state(api_pb2.CONTAINER_CREATED)), "", False, id="created"),
        pytest.param(_filter(label_selector={"app": "web"}), "", True, id="one-label"),
        pytest.param(
            _filter(label_selector={"app": "web", "tier": "front"}), "", True, id="two-labels"
        ),
        pytest.param(_filter(label_selector={"app": "db"}), "", False, id="label-differs"),
        pytest.param(_filter(label_selector={"zone": ""}), "", False, id="label-missing"),
        pytest.param(
            _filter(
                id="9a8b",
                pod_sandbox_id="4f",
                state=_state(api_pb2.CONTAINER_RUNNING),
                label_selector={"tier": "front"},
            ),
            "9a8b7c6d",
            True,
            id="all-at-once",
        ),
    ],
)
def test_matches(flt: api_pb2.ContainerFilter, resolved_id: str, expected: bool) -> None:
    assert container_cri.matches(_container(), flt, resolved_id) is expected


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ("created", api_pb2.CONTAINER_CREATED),
        ("exited", api_pb2.CONTAINER_EXITED),
        ("unknown", api_pb2.CONTAINER_UNKNOWN),
    ],
)
def test_a_state_filter_matches_its_state_only(state: str, value: int) -> None:
    flt = _filter(state=_state(value))
    assert container_cri.matches(_container(state=state), flt, "")
    assert not container_cri.matches(_container(state="running"), flt, "")
