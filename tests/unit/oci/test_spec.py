"""The pause container's spec, field by field, against what containerd's CRI plugin writes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from criproxy.oci import (
    DEFAULT_SANDBOX_OOM_SCORE_ADJ,
    ImageProcess,
    SandboxResources,
    SandboxSpecInput,
    SpecError,
    UserError,
    cgroups_path,
    default_capabilities,
    default_masked_paths,
    default_readonly_paths,
    merge_env,
    restrict_oom_score_adj,
    sandbox_spec,
)

SANDBOX_ID = "f" * 64
PAUSE = ImageProcess(
    env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    entrypoint=("/pause",),
    user="65535:65535",
)


def make(**changes: Any) -> SandboxSpecInput:
    base = SandboxSpecInput(
        id=SANDBOX_ID,
        pod_name="web-0",
        pod_namespace="default",
        pod_uid="7a3c",
        image=PAUSE,
        image_name="registry.k8s.io/pause:3.10",
        sandbox_shm_path=f"/run/criproxy/sandboxes/{SANDBOX_ID}/shm",
        resolv_conf_path=f"/var/lib/criproxy/sandboxes/{SANDBOX_ID}/resolv.conf",
        hostname="web-0",
        log_directory="/var/log/pods/default_web-0_7a3c",
        netns_path="/var/run/netns/cni-1234",
    )
    return replace(base, **changes)


def namespaces(spec: dict[str, Any]) -> dict[str, str | None]:
    return {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}


def mount(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [m for m in spec["mounts"] if m["destination"] == destination]
    return found


# --- process ---------------------------------------------------------------------------------


def test_process_runs_the_pause_image_entrypoint_and_cmd_with_its_env() -> None:
    image = ImageProcess(env=("A=1", "B=2", "A=3", "NOVALUE"), entrypoint=("/pause",), cmd=("-v",))
    process = sandbox_spec(make(image=image))["process"]
    assert process["args"] == ["/pause", "-v"]
    # containerd replaces only keys of the (empty) default env; bare names are dropped.
    assert process["env"] == ["A=1", "B=2", "A=3"]
    assert process["cwd"] == "/"


def test_cmd_alone_is_the_command() -> None:
    image = ImageProcess(cmd=("/pause",))
    assert sandbox_spec(make(image=image))["process"]["args"] == ["/pause"]


def test_working_dir_of_the_image_is_the_cwd() -> None:
    image = replace(PAUSE, working_dir="/work")
    assert sandbox_spec(make(image=image))["process"]["cwd"] == "/work"


def test_no_env_leaves_env_out() -> None:
    image = ImageProcess(entrypoint=("/pause",))
    assert "env" not in sandbox_spec(make(image=image))["process"]


def test_pause_image_without_a_command_is_refused() -> None:
    with pytest.raises(SpecError, match="no entrypoint and no cmd"):
        sandbox_spec(make(image=ImageProcess(env=("A=1",))))


def test_default_security_settings_of_the_sandbox() -> None:
    process = sandbox_spec(make())["process"]
    caps = default_capabilities()
    assert process["capabilities"] == {"bounding": caps, "effective": caps, "permitted": caps}
    assert process["noNewPrivileges"] is True
    assert "rlimits" not in process
    assert "apparmorProfile" not in process
    assert "inheritable" not in process["capabilities"]


def test_image_config_is_read_from_the_oci_config_object() -> None:
    image = ImageProcess.from_image_config(
        {"Env": ["PATH=/bin"], "Entrypoint": ["/pause"], "Cmd": None, "User": "65535:65535"}
    )
    assert image == ImageProcess(env=("PATH=/bin",), entrypoint=("/pause",), user="65535:65535")
    assert ImageProcess.from_image_config(None) == ImageProcess()


# --- user and groups -------------------------------------------------------------------------


def test_image_user_sets_uid_gid_and_additional_gids() -> None:
    user = sandbox_spec(make())["process"]["user"]
    assert user == {"uid": 65535, "gid": 65535, "additionalGids": [65535]}


def test_run_as_user_and_group_override_the_image_user() -> None:
    user = sandbox_spec(make(run_as_user=1000, run_as_group=3000))["process"]["user"]
    assert user == {"uid": 1000, "gid": 3000, "additionalGids": [3000]}


def test_run_as_user_alone_takes_its_gid_from_the_image_passwd() -> None:
    passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1001::/home/www:/bin/sh\n"
    user = sandbox_spec(make(run_as_user=1000, etc_passwd=passwd))["process"]["user"]
    assert user == {"uid": 1000, "gid": 1001, "additionalGids": [1001]}
    unknown = sandbox_spec(make(run_as_user=42, etc_passwd=passwd))["process"]["user"]
    assert unknown == {"uid": 42, "gid": 0, "additionalGids": [0]}
    no_file = sandbox_spec(make(run_as_user=42))["process"]["user"]
    assert no_file == {"uid": 42, "gid": 0, "additionalGids": [0]}


def test_named_image_user_is_resolved_from_passwd() -> None:
    image = replace(PAUSE, user="nobody")
    passwd = "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    user = sandbox_spec(make(image=image, etc_passwd=passwd))["process"]["user"]
    assert user == {"uid": 65534, "gid": 65534, "additionalGids": [65534]}
    with pytest.raises(UserError, match="no /etc/passwd"):
        sandbox_spec(make(image=image))


def test_group_without_user_is_refused() -> None:
    with pytest.raises(UserError, match="without user"):
        sandbox_spec(make(run_as_group=5))


def test_supplemental_groups_stay_only_without_any_user() -> None:
    # containerd applies the user after the groups and the user resets them.
    no_user = make(image=replace(PAUSE, user=""), supplemental_groups=(30, 10, 30))
    assert sandbox_spec(no_user)["process"]["user"] == {
        "uid": 0,
        "gid": 0,
        "additionalGids": [10, 30],
    }
    with_user = sandbox_spec(make(supplemental_groups=(10,)))["process"]["user"]
    assert with_user["additionalGids"] == [65535]


def test_no_user_and_no_groups_is_root_without_additional_gids() -> None:
    user = sandbox_spec(make(image=replace(PAUSE, user="")))["process"]["user"]
    assert user == {"uid": 0, "gid": 0}


# --- root, hostname, mounts ------------------------------------------------------------------


def test_rootfs_is_relative_and_always_read_only() -> None:
    spec = sandbox_spec(make())
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "web-0"
    assert "hostname" not in sandbox_spec(make(hostname=""))


def test_default_mounts_without_run_and_with_the_pod_shm_and_resolv_conf() -> None:
    spec = sandbox_spec(make())
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/dev/shm",
        "/etc/resolv.conf",
    ]
    assert mount(spec, "/proc") == {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    }
    assert mount(spec, "/dev") == {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    }
    assert mount(spec, "/dev/pts")["options"] == [
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
        "gid=5",
    ]
    assert mount(spec, "/dev/mqueue")["type"] == "mqueue"
    assert mount(spec, "/sys") == {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }
    bind = ["rbind", "ro", "nosuid", "nodev", "noexec"]
    assert mount(spec, "/dev/shm") == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": f"/run/criproxy/sandboxes/{SANDBOX_ID}/shm",
        "options": bind,
    }
    assert mount(spec, "/etc/resolv.conf") == {
        "destination": "/etc/resolv.conf",
        "type": "bind",
        "source": f"/var/lib/criproxy/sandboxes/{SANDBOX_ID}/resolv.conf",
        "options": bind,
    }


def test_ipc_node_binds_the_host_dev_shm() -> None:
    spec = sandbox_spec(make(ipc="node"))
    assert mount(spec, "/dev/shm")["source"] == "/dev/shm"
    assert "ipc" not in namespaces(spec)


# --- namespaces ------------------------------------------------------------------------------


def test_pod_namespaces_are_new_and_the_network_is_the_pod_netns() -> None:
    assert namespaces(sandbox_spec(make())) == {
        "pid": None,
        "ipc": None,
        "uts": None,
        "mount": None,
        "network": "/var/run/netns/cni-1234",
    }


def test_network_namespace_without_a_path_yet_is_a_new_one() -> None:
    spec = sandbox_spec(make(netns_path=""))
    assert {"type": "network"} in spec["linux"]["namespaces"]


def test_host_network_drops_the_network_and_uts_namespaces() -> None:
    spec = sandbox_spec(make(network="node"))
    assert list(namespaces(spec)) == ["pid", "ipc", "mount"]


def test_pid_node_drops_the_pid_namespace() -> None:
    assert list(namespaces(sandbox_spec(make(pid="node")))) == ["ipc", "uts", "mount", "network"]
    # "container" and "pod" both give the pause container its own pid namespace
    for mode in ("container", "pod"):
        assert "pid" in namespaces(sandbox_spec(make(pid=mode)))


def test_all_host_namespaces_leave_only_mount() -> None:
    spec = sandbox_spec(make(network="node", pid="node", ipc="node"))
    assert spec["linux"]["namespaces"] == [{"type": "mount"}]


# --- cgroups ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "driver", "expected"),
    [
        ("/kubepods/besteffort/pod7a3c", "cgroupfs", "/kubepods/besteffort/pod7a3c/abc"),
        ("/kubepods/burstable/pod7a3c/", "cgroupfs", "/kubepods/burstable/pod7a3c/abc"),
        ("kubepods//pod1", "cgroupfs", "kubepods/pod1/abc"),
        (
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7a3c.slice",
            "systemd",
            "kubepods-besteffort-pod7a3c.slice:cri-containerd:abc",
        ),
        ("kubepods-pod1.slice", "systemd", "kubepods-pod1.slice:cri-containerd:abc"),
        # containerd decides by the .slice suffix, whatever the configured driver
        ("/a.slice/b.slice/", "cgroupfs", "b.slice:cri-containerd:abc"),
    ],
)
def test_cgroups_path(parent: str, driver: Any, expected: str) -> None:
    assert cgroups_path(parent, "abc", driver) == expected


def test_cgroup_parent_places_the_sandbox_with_two_cpu_shares() -> None:
    spec = sandbox_spec(make(cgroup_parent="/kubepods/besteffort/pod7a3c"))
    assert spec["linux"]["cgroupsPath"] == f"/kubepods/besteffort/pod7a3c/{SANDBOX_ID}"
    assert spec["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "cpu": {"shares": 2},
    }


def test_systemd_driver_gives_the_slice_form() -> None:
    spec = sandbox_spec(
        make(cgroup_parent="kubepods-besteffort-pod7a3c.slice", cgroup_driver="systemd")
    )
    assert spec["linux"]["cgroupsPath"] == (
        f"kubepods-besteffort-pod7a3c.slice:cri-containerd:{SANDBOX_ID}"
    )


def test_no_cgroup_parent_keeps_containerds_namespaced_default() -> None:
    spec = sandbox_spec(make(containerd_namespace="k8s.io"))
    assert spec["linux"]["cgroupsPath"] == f"/k8s.io/{SANDBOX_ID}"


def test_disabled_cgroups_leave_no_path_and_no_shares() -> None:
    spec = sandbox_spec(make(cgroup_parent="/kubepods", disable_cgroup=True))
    assert "cgroupsPath" not in spec["linux"]
    assert "cpu" not in spec["linux"]["resources"]


def test_restrict_oom_score_adj_never_goes_below_the_current_score() -> None:
    assert restrict_oom_score_adj(-998, -999) == -998
    assert restrict_oom_score_adj(-998, 0) == 0
    assert restrict_oom_score_adj(500, 0) == 500


def test_oom_score_adj_is_placed_as_given() -> None:
    assert sandbox_spec(make())["process"]["oomScoreAdj"] == DEFAULT_SANDBOX_OOM_SCORE_ADJ == -998
    assert sandbox_spec(make(oom_score_adj=0))["process"]["oomScoreAdj"] == 0


# --- sysctls ---------------------------------------------------------------------------------


def test_sysctls_are_copied_sorted() -> None:
    sysctls = {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"}
    spec = sandbox_spec(make(sysctls=sysctls))
    assert list(spec["linux"]["sysctl"].items()) == sorted(sysctls.items())


def test_no_sysctls_leaves_sysctl_out() -> None:
    assert "sysctl" not in sandbox_spec(make())["linux"]


def test_unprivileged_ports_and_icmp_are_added_unless_set_or_host_network() -> None:
    inp = make(enable_unprivileged_ports=True, enable_unprivileged_icmp=True)
    assert sandbox_spec(inp)["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    own = replace(inp, sysctls={"net.ipv4.ip_unprivileged_port_start": "1024"})
    assert sandbox_spec(own)["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"] == "1024"
    assert "sysctl" not in sandbox_spec(replace(inp, network="node"))["linux"]


# --- privileged, seccomp, SELinux ------------------------------------------------------------

SECCOMP = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "x"}]}


def test_seccomp_profile_is_placed_as_a_copy() -> None:
    profile = json.loads(json.dumps(SECCOMP))
    spec = sandbox_spec(make(seccomp=profile))
    assert spec["linux"]["seccomp"] == SECCOMP
    spec["linux"]["seccomp"]["syscalls"][0]["names"].append("write")
    assert profile == SECCOMP


def test_no_seccomp_profile_leaves_seccomp_out() -> None:
    assert "seccomp" not in sandbox_spec(make())["linux"]


def test_privileged_sandbox_has_no_seccomp_no_selinux_label_and_rw_sys() -> None:
    spec = sandbox_spec(
        make(
            privileged=True,
            seccomp=SECCOMP,
            selinux_process_label="system_u:system_r:container_t:s0:c1,c2",
            selinux_mount_label="system_u:object_r:container_file_t:s0:c1,c2",
        )
    )
    assert "seccomp" not in spec["linux"]
    assert "selinuxLabel" not in spec["process"]
    assert spec["linux"]["mountLabel"] == "system_u:object_r:container_file_t:s0:c1,c2"
    assert mount(spec, "/sys")["options"] == ["nosuid", "noexec", "nodev", "rw"]
    # containerd keeps the masked and read-only paths and the default capabilities for
    # a privileged pause container (only privileged containers lose them)
    assert spec["linux"]["maskedPaths"] == default_masked_paths()
    assert spec["linux"]["readonlyPaths"] == default_readonly_paths()
    assert spec["process"]["capabilities"]["bounding"] == default_capabilities()


def test_selinux_labels_of_an_unprivileged_sandbox() -> None:
    spec = sandbox_spec(make(selinux_process_label="p", selinux_mount_label="m"))
    assert spec["process"]["selinuxLabel"] == "p"
    assert spec["linux"]["mountLabel"] == "m"


def test_masked_and_readonly_paths() -> None:
    linux = sandbox_spec(make())["linux"]
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/sys/devices/virtual/powercap" in linux["maskedPaths"]
    assert linux["readonlyPaths"] == [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]


# --- annotations -----------------------------------------------------------------------------


def test_cri_annotations_of_a_sandbox() -> None:
    assert sandbox_spec(make())["annotations"] == {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.podsandbox.image-name": "registry.k8s.io/pause:3.10",
        "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
        "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_web-0_7a3c",
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "7a3c",
    }


def test_pod_resources_become_annotations() -> None:
    resources = SandboxResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 30
    )
    annotations = sandbox_spec(make(resources=resources))["annotations"]
    assert annotations["io.kubernetes.cri.sandbox-cpu-period"] == "100000"
    assert annotations["io.kubernetes.cri.sandbox-cpu-quota"] == "50000"
    assert annotations["io.kubernetes.cri.sandbox-cpu-shares"] == "512"
    assert annotations["io.kubernetes.cri.sandbox-memory"] == str(1 << 30)
    assert "io.kubernetes.cri.sandbox-memory" not in sandbox_spec(make())["annotations"]


def test_only_pod_annotations_matching_the_runtime_patterns_pass_through() -> None:
    pod = {
        "io.katacontainers.config.hypervisor.kernel": "k",
        "example.com/secret": "s",
        "io.kubernetes.cri.sandbox-id": "forged",
    }
    spec = sandbox_spec(
        make(annotations=pod, pod_annotation_patterns=("io.katacontainers.*", "io.kubernetes.*"))
    )
    annotations = spec["annotations"]
    assert annotations["io.katacontainers.config.hypervisor.kernel"] == "k"
    assert "example.com/secret" not in annotations
    assert annotations["io.kubernetes.cri.sandbox-id"] == SANDBOX_ID
    assert (
        "io.katacontainers.config.hypervisor.kernel"
        not in sandbox_spec(make(annotations=pod))["annotations"]
    )


# --- the whole -------------------------------------------------------------------------------


def test_spec_is_json_serialisable_and_deterministic() -> None:
    inp = make(
        cgroup_parent="/kubepods/pod7a3c",
        sysctls={"b": "2", "a": "1"},
        seccomp=SECCOMP,
        resources=SandboxResources(cpu_shares=2),
        supplemental_groups=(3, 1),
    )
    first = json.dumps(sandbox_spec(inp))
    second = json.dumps(sandbox_spec(inp))
    assert first == second
    assert json.loads(first) == sandbox_spec(inp)


def test_each_call_returns_fresh_objects() -> None:
    first = sandbox_spec(make())
    first["mounts"].clear()
    first["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    first["linux"]["maskedPaths"].clear()
    second = sandbox_spec(make())
    assert len(second["mounts"]) == 7
    assert second["process"]["capabilities"]["bounding"] == default_capabilities()
    assert second["linux"]["maskedPaths"] == default_masked_paths()


def test_top_level_keys_in_runtime_spec_order() -> None:
    spec = sandbox_spec(make())
    assert list(spec) == [
        "ociVersion",
        "process",
        "root",
        "hostname",
        "mounts",
        "annotations",
        "linux",
    ]
    assert spec["ociVersion"] == "1.0.2-dev"


def test_merge_env_replaces_by_key_and_unsets_bare_names() -> None:
    assert merge_env(["PATH=/bin", "HOME=/root"], ["HOME=/home", "PATH", "X=1"]) == [
        "HOME=/home",
        "X=1",
    ]
