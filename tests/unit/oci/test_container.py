"""A CRI container's spec, field by field, against what containerd's CRI plugin writes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from criproxy.oci import (
    DEFAULT_PATH_ENV,
    ContainerConfig,
    ContainerResources,
    ContainerSecurity,
    ContainerSpecInput,
    HostDevice,
    HugepageLimit,
    ImageProcess,
    MountConfig,
    PodFacts,
    SpecError,
    UserError,
    UsernsConfig,
    container_spec,
    default_capabilities,
    default_masked_paths,
    default_readonly_paths,
    effective_user,
    linux_resources,
)
from criproxy.oci.capabilities import from_mask
from criproxy.oci.spec import IdMapping

CONTAINER_ID = "c" * 64
SANDBOX_ID = "f" * 64
FILES = f"/var/lib/criproxy/sandboxes/{SANDBOX_ID}"
SHM = f"/run/criproxy/sandboxes/{SANDBOX_ID}/shm"
HOST_CAPS = from_mask(0x1FFFEFFFFFF)
"""This host's bounding set: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE."""

BUSYBOX = ImageProcess(env=(DEFAULT_PATH_ENV,), cmd=("sh",))
POD = PodFacts(
    id=SANDBOX_ID,
    name="web-0",
    namespace="default",
    uid="7a3c",
    pid=4242,
    hostname="web-0",
    files_dir=FILES,
    shm=SHM,
)
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
default-user:x:1000:1000::/home/default-user:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:root
default-user:x:1000:default-user
group-defined-in-image:x:50000:default-user,daemon
wheel:x:10:root,default-user
"""


def make(
    *,
    image: ImageProcess = BUSYBOX,
    pod: PodFacts = POD,
    security: ContainerSecurity | None = None,
    inp: dict[str, Any] | None = None,
    **config: Any,
) -> ContainerSpecInput:
    cfg = ContainerConfig(name="app", image="busybox", **config)
    if security is not None:
        cfg = replace(cfg, security=security)
    base = ContainerSpecInput(
        id=CONTAINER_ID,
        config=cfg,
        image=image,
        image_name="docker.io/library/busybox:1.36",
        pod=pod,
        bounding_capabilities=HOST_CAPS,
    )
    return replace(base, **(inp or {}))


def sec(**changes: Any) -> ContainerSecurity:
    return ContainerSecurity(**changes)


def spec_of(**kwargs: Any) -> dict[str, Any]:
    return container_spec(make(**kwargs))


def mount(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [m for m in spec["mounts"] if m["destination"] == destination]
    return found


def destinations(spec: dict[str, Any]) -> list[str]:
    return [m["destination"] for m in spec["mounts"]]


def namespaces(spec: dict[str, Any]) -> dict[str, str | None]:
    return {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}


def unconditional(seccomp: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in seccomp["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


# --- process: args, env, cwd, tty ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "args", "expected"),
    [
        # no command: the image's entrypoint runs with args, else with the image's cmd
        (("/ep",), ("c1",), (), (), ["/ep", "c1"]),
        (("/ep",), ("c1",), (), ("a1",), ["/ep", "a1"]),
        ((), ("c1", "c2"), (), (), ["c1", "c2"]),
        ((), ("c1",), (), ("a1",), ["a1"]),
        # a command replaces entrypoint and cmd, even when no args are given
        (("/ep",), ("c1",), ("/cmd",), (), ["/cmd"]),
        (("/ep",), ("c1",), ("/cmd",), ("a1", "a2"), ["/cmd", "a1", "a2"]),
        ((), (), ("/cmd",), (), ["/cmd"]),
        # docker's ENTRYPOINT [""] is no entrypoint
        (("",), ("c1",), (), (), ["c1"]),
    ],
)
def test_args_follow_the_kubelets_command_rules(
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    command: tuple[str, ...],
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    image = ImageProcess(entrypoint=entrypoint, cmd=cmd)
    spec = spec_of(image=image, command=command, args=args)
    assert spec["process"]["args"] == expected


def test_no_command_anywhere_is_refused() -> None:
    with pytest.raises(SpecError, match="no command specified"):
        spec_of(image=ImageProcess(env=("A=1",)))


def test_env_is_path_then_hostname_then_image_then_config() -> None:
    image = ImageProcess(env=("PATH=/bin", "A=image", "DROP_ME", "B=image"), cmd=("sh",))
    spec = spec_of(image=image, envs=(("A", "config"), ("C", "config"), ("C", "last")))
    assert spec["process"]["env"] == [
        "PATH=/bin",  # the image's PATH replaces the default in place
        "HOSTNAME=web-0",
        "A=config",  # one entry per key, with the value runc would give the process
        "B=image",
        "C=last",
    ]


def test_bare_names_in_the_image_env_unset_the_defaults() -> None:
    image = ImageProcess(env=("HOSTNAME", "A=1"), cmd=("sh",))
    assert spec_of(image=image)["process"]["env"] == [DEFAULT_PATH_ENV, "A=1"]


def test_default_path_when_nobody_sets_one_and_image_may_override_hostname() -> None:
    image = ImageProcess(env=("HOSTNAME=image",), cmd=("sh",))
    assert spec_of(image=image)["process"]["env"] == [DEFAULT_PATH_ENV, "HOSTNAME=image"]


def test_config_env_wins_over_the_pod_hostname() -> None:
    env = spec_of(envs=(("HOSTNAME", "mine"),))["process"]["env"]
    assert env == [DEFAULT_PATH_ENV, "HOSTNAME=mine"]


def test_tty_sets_terminal_and_term() -> None:
    process = spec_of(tty=True)["process"]
    assert process["terminal"] is True
    assert process["env"] == [DEFAULT_PATH_ENV, "TERM=xterm", "HOSTNAME=web-0"]
    assert "terminal" not in spec_of()["process"]
    own = spec_of(tty=True, envs=(("TERM", "vt100"),))["process"]["env"]
    assert own == [DEFAULT_PATH_ENV, "TERM=vt100", "HOSTNAME=web-0"]


@pytest.mark.parametrize(
    ("config_dir", "image_dir", "expected"),
    [("/cfg", "/img", "/cfg"), ("", "/img", "/img"), ("", "", "/")],
)
def test_cwd_from_config_then_image_then_root(
    config_dir: str, image_dir: str, expected: str
) -> None:
    image = replace(BUSYBOX, working_dir=image_dir)
    assert spec_of(image=image, working_dir=config_dir)["process"]["cwd"] == expected


def test_no_rlimits_and_new_privileges_unless_asked() -> None:
    process = spec_of()["process"]
    assert "rlimits" not in process
    assert process["noNewPrivileges"] is False
    assert spec_of(security=sec(no_new_privs=True))["process"]["noNewPrivileges"] is True


def test_root_is_relative_and_read_only_on_request() -> None:
    assert spec_of()["root"] == {"path": "rootfs"}
    assert spec_of(security=sec(readonly_rootfs=True))["root"] == {
        "path": "rootfs",
        "readonly": True,
    }
    assert "hostname" not in spec_of()  # the pod's UTS namespace carries it


# --- user and groups -------------------------------------------------------------------------


def user_of(**kwargs: Any) -> dict[str, Any]:
    inp = make(inp={"etc_passwd": PASSWD, "etc_group": GROUP}, **kwargs)
    user: dict[str, Any] = container_spec(inp)["process"]["user"]
    assert effective_user(inp) == (
        user["uid"],
        user["gid"],
        tuple(user.get("additionalGids", ())),
    )
    return user


def test_critest_merge_policy_adds_image_groups_and_supplemental_groups() -> None:
    user = user_of(security=sec(run_as_user=1000, supplemental_groups=(1234,)))
    assert user == {"uid": 1000, "gid": 1000, "additionalGids": [10, 1000, 1234, 50000]}


def test_critest_strict_policy_adds_only_the_supplemental_groups() -> None:
    security = sec(
        run_as_user=1000, supplemental_groups=(1234,), supplemental_groups_policy="strict"
    )
    assert user_of(security=security) == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 1234]}


def test_image_user_by_name_with_its_groups() -> None:
    image = replace(BUSYBOX, user="default-user")
    assert user_of(image=image) == {
        "uid": 1000,
        "gid": 1000,
        "additionalGids": [10, 1000, 50000],
    }


def test_image_user_with_group_keeps_the_users_memberships() -> None:
    image = replace(BUSYBOX, user="default-user:1")
    assert user_of(image=image) == {"uid": 1000, "gid": 1, "additionalGids": [1, 10, 50000]}


def test_run_as_user_and_group_override_the_image_user() -> None:
    image = replace(BUSYBOX, user="default-user")
    user = user_of(image=image, security=sec(run_as_user=1, run_as_group=7))
    assert user == {"uid": 1, "gid": 7, "additionalGids": [7, 50000]}


def test_run_as_username() -> None:
    user = user_of(security=sec(run_as_username="daemon"))
    assert user == {"uid": 1, "gid": 1, "additionalGids": [1, 50000]}


def test_no_user_is_root_with_roots_groups() -> None:
    assert user_of() == {"uid": 0, "gid": 0, "additionalGids": [0, 1, 10]}


def test_strict_without_any_user_keeps_only_supplemental_groups() -> None:
    strict = sec(supplemental_groups_policy="strict")
    assert user_of(security=strict) == {"uid": 0, "gid": 0}
    with_groups = replace(strict, supplemental_groups=(5, 3, 5))
    assert user_of(security=with_groups) == {"uid": 0, "gid": 0, "additionalGids": [3, 5]}


def test_unknown_uid_without_files_has_gid_zero() -> None:
    inp = make(security=sec(run_as_user=4000))
    assert container_spec(inp)["process"]["user"] == {
        "uid": 4000,
        "gid": 0,
        "additionalGids": [0],
    }


def test_unresolvable_user_is_refused() -> None:
    with pytest.raises(UserError, match="nobody"):
        spec_of(image=replace(BUSYBOX, user="nobody"))
    with pytest.raises(UserError, match="without user"):
        spec_of(security=sec(run_as_group=5))


# --- mounts ----------------------------------------------------------------------------------


def test_default_mounts_cgroup_and_pod_files() -> None:
    spec = spec_of()
    assert destinations(spec) == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/shm",
    ]
    assert mount(spec, "/sys")["options"] == ["nosuid", "noexec", "nodev", "ro"]
    assert mount(spec, "/sys/fs/cgroup") == {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    }
    for name, dest in (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts")):
        assert mount(spec, dest) == {
            "destination": dest,
            "type": "bind",
            "source": f"{FILES}/{name}",
            "options": ["rbind", "rprivate", "rw"],
        }
    assert mount(spec, "/etc/resolv.conf")["source"] == f"{FILES}/resolv.conf"
    assert mount(spec, "/dev/shm") == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": SHM,
        "options": ["rbind", "rprivate", "rw"],
    }
    assert "rootfsPropagation" not in spec["linux"]


def test_read_only_rootfs_makes_the_pod_files_read_only_but_not_shm() -> None:
    spec = spec_of(security=sec(readonly_rootfs=True))
    for dest in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        assert mount(spec, dest)["options"] == ["rbind", "rprivate", "ro"]
    assert mount(spec, "/dev/shm")["options"] == ["rbind", "rprivate", "rw"]


def test_host_ipc_pods_get_the_hosts_dev_shm() -> None:
    spec = spec_of(pod=replace(POD, ipc="node", shm=""))
    assert mount(spec, "/dev/shm")["source"] == "/dev/shm"


@pytest.mark.parametrize(
    ("mount_config", "options"),
    [
        (MountConfig("/data", "/srv/data"), ["rbind", "rprivate", "rw"]),
        (MountConfig("/data", "/srv/data", readonly=True), ["rbind", "rprivate", "ro"]),
        (MountConfig("/data", "/srv/data", propagation="rslave"), ["rbind", "rslave", "rw"]),
        (MountConfig("/data", "/srv/data", propagation="rshared"), ["rbind", "rshared", "rw"]),
        (
            MountConfig("/data", "/srv/data", readonly=True, recursive_read_only=True),
            ["rbind", "rprivate", "rro"],
        ),
        (MountConfig("/data", "/srv/data", selinux_relabel=True), ["rbind", "rprivate", "rw"]),
        (
            MountConfig("/data", "/srv/data", options=("nosuid", "noexec")),
            ["rbind", "rprivate", "rw", "noexec", "nosuid"],
        ),
        (
            MountConfig("/data", "/srv/data", readonly=True, options=("nodev",)),
            ["rbind", "rprivate", "ro", "nodev"],
        ),
    ],
)
def test_cri_bind_mounts(mount_config: MountConfig, options: list[str]) -> None:
    spec = spec_of(mounts=(mount_config,))
    assert mount(spec, "/data") == {
        "destination": "/data",
        "type": "bind",
        "source": "/srv/data",
        "options": options,
    }


def test_propagation_sets_the_rootfs_propagation_and_shared_wins() -> None:
    slave = MountConfig("/a", "/srv/a", propagation="rslave")
    shared = MountConfig("/b", "/srv/b", propagation="rshared")
    assert spec_of(mounts=(slave,))["linux"]["rootfsPropagation"] == "rslave"
    assert spec_of(mounts=(shared, slave))["linux"]["rootfsPropagation"] == "rshared"
    assert spec_of(mounts=(slave, shared))["linux"]["rootfsPropagation"] == "rshared"


@pytest.mark.parametrize(
    ("mount_config", "message"),
    [
        (MountConfig("/d", "/srv/d", recursive_read_only=True), "conflicts with a read-write"),
        (
            MountConfig(
                "/d", "/srv/d", readonly=True, recursive_read_only=True, propagation="rslave"
            ),
            "needs private propagation, not rslave",
        ),
        (MountConfig("/d", "/img/rootfs", image="docker.io/library/data:1"), "read-only"),
    ],
)
def test_impossible_mounts_are_refused_naming_the_mount(
    mount_config: MountConfig, message: str
) -> None:
    with pytest.raises(SpecError, match=message) as err:
        spec_of(mounts=(mount_config,))
    assert "'/d'" in str(err.value)


def test_binds_are_ordered_by_depth_keeping_the_given_order_otherwise() -> None:
    mounts = (
        MountConfig("/a/b/c", "/srv/abc"),
        MountConfig("/z", "/srv/z"),
        MountConfig("/a/b/", "/srv/ab"),
        MountConfig("/a", "/srv/a"),
    )
    spec = spec_of(mounts=mounts)
    binds = [m["destination"] for m in spec["mounts"] if m["type"] == "bind"]
    # the CRI mounts come before the pod's files of the same depth
    assert binds == [
        "/z",
        "/a",
        "/a/b/",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/shm",
        "/a/b/c",
    ]


def test_cri_mounts_replace_pod_files_defaults_and_volumes_on_the_same_path() -> None:
    mounts = (
        MountConfig("/etc/hosts", "/srv/hosts", readonly=True),
        MountConfig("/dev/shm/", "/srv/shm"),
        MountConfig("/sys/fs/cgroup", "/sys/fs/cgroup"),
        MountConfig("/var/lib/data", "/srv/data"),
    )
    volumes = (
        MountConfig("/var/lib/data", "/volumes/1"),
        MountConfig("/cache", "/volumes/2"),
    )
    spec = spec_of(mounts=mounts, inp={"volume_mounts": volumes})
    assert mount(spec, "/etc/hosts")["source"] == "/srv/hosts"
    assert mount(spec, "/dev/shm/")["source"] == "/srv/shm"
    assert "/dev/shm" not in destinations(spec)
    assert mount(spec, "/sys/fs/cgroup")["type"] == "bind"
    assert mount(spec, "/var/lib/data")["source"] == "/srv/data"
    assert mount(spec, "/cache") == {
        "destination": "/cache",
        "type": "bind",
        "source": "/volumes/2",
        "options": ["rbind", "rprivate", "rw"],
    }


def test_a_dev_mount_replaces_every_default_mount_under_dev() -> None:
    spec = spec_of(mounts=(MountConfig("/dev", "/dev"),))
    assert [d for d in destinations(spec) if d.startswith("/dev")] == ["/dev", "/dev/shm"]
    assert mount(spec, "/dev")["type"] == "bind"


def test_idmapped_mounts_carry_their_mappings() -> None:
    mapped = MountConfig(
        "/data",
        "/srv/data",
        uid_mappings=(IdMapping(0, 100000, 65536),),
        gid_mappings=(IdMapping(0, 200000, 65536),),
    )
    entry = mount(spec_of(mounts=(mapped,)), "/data")
    assert entry["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert entry["gidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]


def test_read_only_image_volume_is_a_read_only_bind() -> None:
    image_mount = MountConfig("/models", "/img/rootfs", readonly=True, image="models:1")
    assert mount(spec_of(mounts=(image_mount,)), "/models")["options"] == [
        "rbind",
        "rprivate",
        "ro",
    ]


# --- masked and read-only paths --------------------------------------------------------------


def test_masked_and_readonly_paths_are_exactly_those_given() -> None:
    security = sec(masked_paths=("/proc/kcore",), readonly_paths=("/proc/sys", "/tmp"))
    linux = spec_of(security=security)["linux"]
    assert linux["maskedPaths"] == ["/proc/kcore"]
    assert linux["readonlyPaths"] == ["/proc/sys", "/tmp"]


def test_the_kubelets_default_lists_pass_through() -> None:
    security = sec(
        masked_paths=tuple(default_masked_paths()), readonly_paths=tuple(default_readonly_paths())
    )
    linux = spec_of(security=security)["linux"]
    assert linux["maskedPaths"] == default_masked_paths()
    assert linux["readonlyPaths"] == default_readonly_paths()


def test_none_given_means_none_masked_as_containerd() -> None:
    linux = spec_of()["linux"]
    assert "maskedPaths" not in linux
    assert "readonlyPaths" not in linux


# --- capabilities ----------------------------------------------------------------------------


def capabilities_of(**kwargs: Any) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = spec_of(**kwargs)["process"]["capabilities"]
    return caps


def test_default_capabilities_and_no_ambient_or_inheritable() -> None:
    caps = capabilities_of()
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == default_capabilities()


def test_add_and_drop_capabilities() -> None:
    security = sec(
        add_capabilities=("CAP_NET_ADMIN",),
        drop_capabilities=("CAP_CHOWN",),
        add_ambient_capabilities=("CAP_NET_ADMIN",),
    )
    caps = capabilities_of(security=security)
    assert caps["bounding"][-1] == "CAP_NET_ADMIN"
    assert "CAP_CHOWN" not in caps["effective"]
    assert "ambient" not in caps


def test_add_all_is_the_hosts_set_not_a_fixed_list() -> None:
    caps = capabilities_of(security=sec(add_capabilities=("ALL",)))
    assert caps["bounding"] == list(HOST_CAPS)
    assert "CAP_SYS_RESOURCE" not in caps["bounding"]


def test_drop_all_then_add() -> None:
    security = sec(add_capabilities=("CAP_NET_BIND_SERVICE",), drop_capabilities=("ALL",))
    assert capabilities_of(security=security)["permitted"] == ["CAP_NET_BIND_SERVICE"]
    assert capabilities_of(security=sec(drop_capabilities=("ALL",))) == {}


def test_capabilities_the_host_lacks_are_not_requested_from_runc() -> None:
    caps = capabilities_of(security=sec(add_capabilities=("CAP_SYS_RESOURCE",)))
    assert caps["bounding"] == default_capabilities()


def test_empty_bounding_set_means_every_known_capability() -> None:
    caps = capabilities_of(
        security=sec(add_capabilities=("ALL",)), inp={"bounding_capabilities": ()}
    )
    assert len(caps["bounding"]) == 41


# --- privileged ------------------------------------------------------------------------------

PRIVILEGED_POD = replace(POD, privileged=True)
DEVICES = (
    HostDevice("/dev/null", "c", 1, 3, 0o666, 0, 0),
    HostDevice("/dev/sda", "b", 8, 0, 0o660, 0, 6),
)
GPU = HostDevice("/dev/nvidia0", "c", 195, 0, 0o666, 0, 0, "rw")


def test_privileged_container_needs_a_privileged_pod() -> None:
    with pytest.raises(SpecError, match="no privileged container allowed in sandbox"):
        spec_of(security=sec(privileged=True))


def test_privileged_container() -> None:
    security = sec(
        privileged=True,
        seccomp="runtime/default",
        apparmor="runtime/default",
        masked_paths=("/proc/kcore",),
        readonly_paths=("/proc/sys",),
        selinux_process_label="system_u:system_r:container_t:s0:c1,c2",
        selinux_mount_label="system_u:object_r:container_file_t:s0:c1,c2",
    )
    spec = spec_of(
        pod=PRIVILEGED_POD,
        security=security,
        inp={
            "all_host_devices": DEVICES,
            "host_devices": (GPU,),
            "cgroup_v2": True,
            "apparmor_enabled": True,
        },
    )
    process, linux = spec["process"], spec["linux"]
    assert process["capabilities"]["bounding"] == list(HOST_CAPS)
    assert process["capabilities"]["effective"] == list(HOST_CAPS)
    assert "maskedPaths" not in linux
    assert "readonlyPaths" not in linux
    assert "seccomp" not in linux
    assert "apparmorProfile" not in process
    assert "selinuxLabel" not in process
    assert linux["mountLabel"] == "system_u:object_r:container_file_t:s0:c1,c2"
    assert process["noNewPrivileges"] is False
    assert mount(spec, "/sys")["options"] == ["nosuid", "noexec", "nodev", "rw"]
    assert mount(spec, "/sys/fs/cgroup")["options"][-1] == "rw"
    assert "cgroup" not in namespaces(spec)
    assert [d["path"] for d in linux["devices"]] == ["/dev/nvidia0", "/dev/null", "/dev/sda"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_privileged_may_still_ask_for_no_new_privileges_and_a_localhost_apparmor() -> None:
    security = sec(privileged=True, no_new_privs=True, apparmor="localhost/my-profile")
    process = spec_of(pod=PRIVILEGED_POD, security=security, inp={"apparmor_enabled": True})[
        "process"
    ]
    assert process["noNewPrivileges"] is True
    assert process["apparmorProfile"] == "my-profile"


def test_devices_and_their_cgroup_rules() -> None:
    linux = spec_of(inp={"host_devices": (GPU, DEVICES[1])})["linux"]
    assert linux["devices"] == [
        {
            "path": "/dev/nvidia0",
            "type": "c",
            "major": 195,
            "minor": 0,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        },
        {
            "path": "/dev/sda",
            "type": "b",
            "major": 8,
            "minor": 0,
            "fileMode": 0o660,
            "uid": 0,
            "gid": 6,
        },
    ]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "rwm"},
    ]
    assert "devices" not in spec_of()["linux"]


# --- namespaces ------------------------------------------------------------------------------


def test_the_pods_namespaces_are_joined_and_pid_is_the_pods() -> None:
    assert namespaces(spec_of(security=sec(pid="pod"))) == {
        "pid": "/proc/4242/ns/pid",
        "ipc": "/proc/4242/ns/ipc",
        "uts": "/proc/4242/ns/uts",
        "mount": None,
        "network": "/proc/4242/ns/net",
    }


def test_pid_namespace_of_the_container_itself() -> None:
    assert namespaces(spec_of(security=sec(pid="container")))["pid"] is None


def test_pid_namespace_of_a_target_container() -> None:
    spec = spec_of(security=sec(pid="target", target_id="abc"), inp={"target_pid": 777})
    assert namespaces(spec)["pid"] == "/proc/777/ns/pid"
    with pytest.raises(SpecError, match="'abc'"):
        spec_of(security=sec(pid="target", target_id="abc"))


def test_host_namespaces_are_reached_through_the_pause_process() -> None:
    # The pause process of a host-network/IPC/PID pod sits in the host's namespaces:
    # joining its namespaces is joining the host's, exactly as containerd does.
    pod = replace(POD, network="node", ipc="node", shm="")
    spec = spec_of(pod=pod, security=sec(pid="node", ipc="node", network="node"))
    assert namespaces(spec) == {
        "pid": "/proc/4242/ns/pid",
        "ipc": "/proc/4242/ns/ipc",
        "uts": "/proc/4242/ns/uts",
        "mount": None,
        "network": "/proc/4242/ns/net",
    }


def test_unknown_pause_process_is_refused() -> None:
    with pytest.raises(SpecError, match="pid 0"):
        spec_of(pod=replace(POD, pid=0))


def test_cgroup_namespace_on_cgroup_v2_only() -> None:
    assert "cgroup" not in namespaces(spec_of())
    spec = spec_of(inp={"cgroup_v2": True})
    assert spec["linux"]["namespaces"][-1] == {"type": "cgroup"}


USERNS = UsernsConfig(uids=(IdMapping(0, 65536, 65536),), gids=(IdMapping(0, 131072, 65536),))


def test_user_namespace_of_the_pod() -> None:
    spec = spec_of(pod=replace(POD, userns=USERNS), security=sec(userns=USERNS))
    assert namespaces(spec)["user"] == "/proc/4242/ns/user"
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 65536, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 131072, "size": 65536}]
    assert mount(spec, "/sys")["type"] == "sysfs"
    assert list(spec["linux"])[:2] == ["uidMappings", "gidMappings"]


def test_user_namespace_with_host_network_binds_the_hosts_sys() -> None:
    pod = replace(POD, userns=USERNS, network="node")
    spec = spec_of(pod=pod, security=sec(userns=USERNS))
    assert mount(spec, "/sys") == {
        "destination": "/sys",
        "type": "bind",
        "source": "/sys",
        "options": ["rbind", "rro", "nosuid", "nodev", "noexec"],
    }


def test_user_namespace_must_match_the_pods() -> None:
    with pytest.raises(SpecError, match="different from container"):
        spec_of(security=sec(userns=USERNS))
    with pytest.raises(SpecError, match="different from container"):
        spec_of(pod=replace(POD, userns=USERNS))


# --- cgroups and resources -------------------------------------------------------------------

RESOURCES = ContainerResources(
    cpu_period=100000,
    cpu_quota=50000,
    cpu_shares=512,
    memory_limit_in_bytes=256 << 20,
    oom_score_adj=900,
    cpuset_cpus="0-1",
    cpuset_mems="0",
    hugepage_limits=(HugepageLimit("2MB", 4 << 20), HugepageLimit("1GB", 0)),
    unified={"memory.high": "200000000", "cpu.weight": "20"},
)


def test_resources() -> None:
    spec = spec_of(resources=RESOURCES, pod=replace(POD, cgroup_parent="/kubepods/pod7a3c"))
    linux = spec["linux"]
    assert linux["cgroupsPath"] == f"/kubepods/pod7a3c/{CONTAINER_ID}"
    assert linux["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 256 << 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "hugepageLimits": [
            {"pageSize": "2MB", "limit": 4 << 20},
            {"pageSize": "1GB", "limit": 0},
        ],
        "unified": {"cpu.weight": "20", "memory.high": "200000000"},
    }
    assert spec["process"]["oomScoreAdj"] == 900


def test_swap_only_where_the_host_can_limit_it() -> None:
    def memory(resources: ContainerResources, swap_controller: bool) -> Any:
        inp = {"swap_controller": swap_controller}
        return spec_of(resources=resources, inp=inp)["linux"]["resources"].get("memory")

    assert memory(RESOURCES, False) == {"limit": 256 << 20}
    assert memory(RESOURCES, True) == {"limit": 256 << 20, "swap": 256 << 20}
    more = replace(RESOURCES, memory_swap_limit_in_bytes=512 << 20)
    assert memory(more, True) == {"limit": 256 << 20, "swap": 512 << 20}
    assert memory(more, False) == {"limit": 256 << 20}
    assert memory(ContainerResources(cpu_shares=2), True) is None


def test_hugepages_are_skipped_without_the_hugetlb_controller() -> None:
    spec = spec_of(resources=RESOURCES, inp={"hugetlb_controller": False})
    assert "hugepageLimits" not in spec["linux"]["resources"]


def test_no_resources_leave_limits_and_oom_score_out() -> None:
    spec = spec_of()
    assert spec["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "oomScoreAdj" not in spec["process"]
    assert spec["linux"]["cgroupsPath"] == f"/k8s.io/{CONTAINER_ID}"


def test_systemd_cgroup_path() -> None:
    pod = replace(POD, cgroup_parent="kubepods-besteffort-pod7a3c.slice")
    spec = spec_of(pod=pod, inp={"cgroup_driver": "systemd"})
    assert spec["linux"]["cgroupsPath"] == (
        f"kubepods-besteffort-pod7a3c.slice:cri-containerd:{CONTAINER_ID}"
    )


def test_disabled_cgroups_drop_the_path_and_the_limits() -> None:
    pod = replace(POD, cgroup_parent="/kubepods/pod7a3c")
    spec = spec_of(pod=pod, resources=RESOURCES, inp={"disable_cgroup": True})
    assert "cgroupsPath" not in spec["linux"]
    assert set(spec["linux"]["resources"]) == {"devices"}
    assert spec["process"]["oomScoreAdj"] == 900


@pytest.mark.parametrize(("requested", "own", "expected"), [(-999, -998, -998), (1000, 0, 1000)])
def test_oom_score_adj_is_clamped_to_criproxys_own(requested: int, own: int, expected: int) -> None:
    resources = ContainerResources(oom_score_adj=requested)
    spec = spec_of(resources=resources, inp={"own_oom_score_adj": own})
    assert spec["process"]["oomScoreAdj"] == expected
    assert spec_of(resources=resources)["process"]["oomScoreAdj"] == requested


def test_linux_resources_for_updates_have_no_devices() -> None:
    assert linux_resources(ContainerResources(cpu_quota=-1, cpu_period=100000)) == {
        "cpu": {"quota": -1, "period": 100000}
    }
    assert linux_resources(ContainerResources()) == {}


def test_pod_sysctls_stay_with_the_pause_container() -> None:
    spec = spec_of(pod=replace(POD, sysctls={"net.core.somaxconn": "1024"}))
    assert "sysctl" not in spec["linux"]


# --- seccomp, AppArmor, SELinux --------------------------------------------------------------


@pytest.mark.parametrize("profile", ["", "unconfined"])
def test_no_seccomp_unless_asked(profile: str) -> None:
    assert "seccomp" not in spec_of(security=sec(seccomp=profile))["linux"]


def test_runtime_default_seccomp_follows_the_containers_capabilities() -> None:
    seccomp = spec_of(security=sec(seccomp="runtime/default"))["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "unshare" not in unconditional(seccomp)
    assert "chroot" in unconditional(seccomp)  # CAP_SYS_CHROOT is a default capability
    # the host's (caller's) capabilities never open it up: CAP_SYS_ADMIN is in HOST_CAPS
    ignored = {"defaultAction": "SCMP_ACT_ALLOW"}
    inp = {"seccomp_profile": ignored}
    assert spec_of(security=sec(seccomp="runtime/default"), inp=inp)["linux"]["seccomp"] == seccomp
    admin = sec(seccomp="runtime/default", add_capabilities=("CAP_SYS_ADMIN",))
    assert "unshare" in unconditional(spec_of(security=admin)["linux"]["seccomp"])
    dropped = sec(seccomp="docker/default", drop_capabilities=("CAP_SYS_CHROOT",))
    assert "chroot" not in unconditional(spec_of(security=dropped)["linux"]["seccomp"])


def test_localhost_seccomp_is_the_loaded_profile() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
    }
    security = sec(seccomp="localhost//var/lib/kubelet/seccomp/block.json")
    spec = spec_of(security=security, inp={"seccomp_profile": profile})
    assert spec["linux"]["seccomp"] == profile
    spec["linux"]["seccomp"]["syscalls"].clear()
    assert profile["syscalls"]  # a copy was placed
    with pytest.raises(SpecError, match="was not loaded"):
        spec_of(security=security)


@pytest.mark.parametrize("profile", ["bogus", "localhost/"])
def test_unknown_seccomp_profiles_are_refused(profile: str) -> None:
    with pytest.raises(SpecError, match="invalid seccomp profile"):
        spec_of(security=sec(seccomp=profile))


@pytest.mark.parametrize(
    ("profile", "enabled", "expected"),
    [
        ("runtime/default", True, "cri-containerd.apparmor.d"),
        ("", True, "cri-containerd.apparmor.d"),  # unset means the runtime default
        ("unconfined", True, None),
        ("localhost/k8s-nginx", True, "k8s-nginx"),
        # a host without AppArmor: nothing set, whatever was asked
        ("runtime/default", False, None),
        ("localhost/k8s-nginx", False, None),
        ("", False, None),
    ],
)
def test_apparmor(profile: str, enabled: bool, expected: str | None) -> None:
    spec = spec_of(security=sec(apparmor=profile), inp={"apparmor_enabled": enabled})
    assert spec["process"].get("apparmorProfile") == expected


def test_selinux_labels() -> None:
    spec = spec_of(security=sec(selinux_process_label="p", selinux_mount_label="m"))
    assert spec["process"]["selinuxLabel"] == "p"
    assert spec["linux"]["mountLabel"] == "m"
    plain = spec_of()
    assert "selinuxLabel" not in plain["process"]
    assert "mountLabel" not in plain["linux"]


# --- annotations -----------------------------------------------------------------------------


def test_cri_annotations_of_a_container() -> None:
    assert spec_of()["annotations"] == {
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.image-name": "docker.io/library/busybox:1.36",
        "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "7a3c",
    }


def test_matching_pod_and_container_annotations_pass_through() -> None:
    pod = replace(
        POD,
        annotations={
            "io.katacontainers.config.a": "pod",
            "io.katacontainers.config.b": "pod",
            "secret": "no",
        },
    )
    annotations = spec_of(
        pod=pod,
        annotations={
            "io.katacontainers.config.b": "container",
            "io.kubernetes.cri.sandbox-id": "forged",
            "other": "no",
        },
        inp={
            "pod_annotation_patterns": ("io.katacontainers.*",),
            "container_annotation_patterns": ("io.katacontainers.*", "io.kubernetes.*"),
        },
    )["annotations"]
    assert annotations["io.katacontainers.config.a"] == "pod"
    assert annotations["io.katacontainers.config.b"] == "container"
    assert annotations["io.kubernetes.cri.sandbox-id"] == SANDBOX_ID
    assert "secret" not in annotations
    assert "other" not in annotations
    assert list(annotations) == sorted(annotations)


# --- the whole -------------------------------------------------------------------------------


def test_keys_in_runtime_spec_order_and_json_round_trip() -> None:
    inp = make(
        tty=True,
        resources=RESOURCES,
        mounts=(MountConfig("/a", "/srv/a", propagation="rslave"),),
        security=sec(seccomp="runtime/default", selinux_process_label="p", pid="pod"),
        inp={"host_devices": (GPU,), "apparmor_enabled": True, "cgroup_v2": True},
    )
    spec = container_spec(inp)
    assert list(spec) == ["ociVersion", "process", "root", "mounts", "annotations", "linux"]
    assert list(spec["process"]) == [
        "terminal",
        "user",
        "args",
        "env",
        "cwd",
        "capabilities",
        "noNewPrivileges",
        "apparmorProfile",
        "oomScoreAdj",
        "selinuxLabel",
    ]
    assert list(spec["linux"]) == [
        "resources",
        "cgroupsPath",
        "namespaces",
        "devices",
        "seccomp",
        "rootfsPropagation",
    ]
    assert json.loads(json.dumps(spec)) == spec
    assert json.dumps(container_spec(inp)) == json.dumps(spec)


def test_each_call_returns_fresh_objects() -> None:
    first = spec_of(mounts=(MountConfig("/a", "/srv/a"),))
    first["mounts"][0]["options"].append("rw")
    first["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    second = spec_of(mounts=(MountConfig("/a", "/srv/a"),))
    assert second["mounts"][0]["options"] == ["nosuid", "noexec", "nodev"]
    assert second["process"]["capabilities"]["bounding"] == default_capabilities()
    cgroup = mount(spec_of(), "/sys/fs/cgroup")
    cgroup["options"].clear()
    assert mount(spec_of(), "/sys/fs/cgroup")["options"]
