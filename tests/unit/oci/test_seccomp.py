"""criproxy's RuntimeDefault seccomp profile and the Localhost profile parser."""

from __future__ import annotations

import json
from typing import Any

import pytest

from criproxy.oci import SpecError, default_capabilities, default_profile, parse_localhost_profile
from criproxy.oci.capabilities import KNOWN

CLONE_NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET."""


def unconditional(profile: dict[str, Any]) -> set[str]:
    """The calls some rule allows whatever their arguments."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def arg_allows(arg: dict[str, Any], value: int) -> bool:
    op = arg["op"]
    if op == "SCMP_CMP_MASKED_EQ":
        return bool(value & arg["value"] == arg.get("valueTwo", 0))
    compare = {
        "SCMP_CMP_EQ": value == arg["value"],
        "SCMP_CMP_NE": value != arg["value"],
        "SCMP_CMP_LT": value < arg["value"],
        "SCMP_CMP_LE": value <= arg["value"],
        "SCMP_CMP_GT": value > arg["value"],
        "SCMP_CMP_GE": value >= arg["value"],
    }
    return compare[op]


def allowed_with_arg0(profile: dict[str, Any], name: str, value: int) -> bool:
    """Whether some ALLOW rule lets `name` through with this first argument."""
    for rule in rules_for(profile, name):
        if rule["action"] != "SCMP_ACT_ALLOW":
            continue
        args = rule.get("args") or []
        if all(arg_allows(a, value) for a in args if a["index"] == 0):
            return True
    return False


DEFAULT = default_profile(default_capabilities(), arch="x86_64")


def test_default_denies_with_eperm_and_names_the_x86_architectures() -> None:
    assert DEFAULT["defaultAction"] == "SCMP_ACT_ERRNO"
    assert DEFAULT["defaultErrnoRet"] == 1
    assert DEFAULT["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert list(DEFAULT) == ["defaultAction", "defaultErrnoRet", "architectures", "syscalls"]
    json.dumps(DEFAULT)


def test_aarch64_and_unknown_machines() -> None:
    arm = default_profile(default_capabilities(), arch="aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    assert {"set_tls", "cacheflush"} <= unconditional(arm)
    assert "arch_prctl" not in unconditional(arm)
    assert default_profile([], arch="arm64")["architectures"] == arm["architectures"]
    assert {"arch_prctl", "modify_ldt"} <= unconditional(DEFAULT)
    other = default_profile([], arch="sparc64")
    assert "architectures" not in other
    assert "read" in unconditional(other)


def test_ordinary_programs_can_run() -> None:
    needed = {"read", "write", "openat", "execve", "mmap", "futex", "clone3", "exit_group"}
    assert needed - {"clone3"} <= unconditional(DEFAULT)
    assert {"chroot", "ptrace", "setuid", "socketpair", "io_uring_setup"} & unconditional(
        DEFAULT
    ) == {"chroot", "ptrace", "setuid", "socketpair"}


@pytest.mark.parametrize(
    "name",
    [
        "unshare",
        "mount",
        "umount2",
        "setns",
        "sethostname",
        "keyctl",
        "add_key",
        "request_key",
        "reboot",
        "kexec_load",
        "bpf",
        "perf_event_open",
        "init_module",
        "open_by_handle_at",
        "settimeofday",
        "acct",
        "swapon",
        "pivot_root",
        "io_uring_setup",
    ],
)
def test_dangerous_calls_are_denied_without_their_capability(name: str) -> None:
    assert not rules_for(DEFAULT, name)


def test_cap_sys_admin_allows_namespace_and_mount_calls_and_any_clone() -> None:
    admin = default_profile([*default_capabilities(), "CAP_SYS_ADMIN"], arch="x86_64")
    assert {"unshare", "mount", "setns", "sethostname", "clone", "clone3"} <= unconditional(admin)
    assert all(rule.get("errnoRet") is None for rule in admin["syscalls"])


def test_without_cap_sys_admin_clone_may_not_create_namespaces() -> None:
    assert "clone" not in unconditional(DEFAULT)
    assert allowed_with_arg0(DEFAULT, "clone", 0x11)  # SIGCHLD | a thread's flags
    assert allowed_with_arg0(DEFAULT, "clone", 0x3D0F00)
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000):
        assert not allowed_with_arg0(DEFAULT, "clone", flag | 0x11)
    (clone_rule,) = rules_for(DEFAULT, "clone")
    assert clone_rule["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    # clone3 hides its flags from seccomp: ENOSYS makes libcs fall back to clone
    (clone3,) = rules_for(DEFAULT, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


@pytest.mark.parametrize(
    ("cap", "calls"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYSLOG", {"syslog"}),
    ],
)
def test_capability_gated_calls(cap: str, calls: set[str]) -> None:
    assert not calls & unconditional(DEFAULT)
    assert calls <= unconditional(default_profile([cap], arch="x86_64"))


def test_capability_names_are_normalised() -> None:
    assert "unshare" in unconditional(default_profile(["sys_admin"], arch="x86_64"))


def test_chroot_needs_cap_sys_chroot() -> None:
    assert "chroot" not in unconditional(default_profile([], arch="x86_64"))


def test_personality_only_for_harmless_personas() -> None:
    for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert allowed_with_arg0(DEFAULT, "personality", persona)
    assert not allowed_with_arg0(DEFAULT, "personality", 0x0040000)  # ADDR_NO_RANDOMIZE


def test_socket_for_every_family_but_af_alg_and_af_vsock() -> None:
    for family in (1, 2, 10, 16, 17, 37, 39, 41, 44):  # unix, inet, inet6, netlink, ...
        assert allowed_with_arg0(DEFAULT, "socket", family), family
    assert not allowed_with_arg0(DEFAULT, "socket", 38)  # AF_ALG
    assert not allowed_with_arg0(DEFAULT, "socket", 40)  # AF_VSOCK
    # one condition per rule: runc ORs conditions on the same argument
    assert all(len(rule["args"]) == 1 for rule in rules_for(DEFAULT, "socket"))


def test_every_capability_gives_a_serialisable_profile() -> None:
    full = default_profile(KNOWN, arch="x86_64")
    assert "clone" in unconditional(full)
    assert "clone3" in unconditional(full)
    json.loads(json.dumps(full))


def test_each_call_returns_a_fresh_profile() -> None:
    first = default_profile([], arch="x86_64")
    first["syscalls"][0]["names"].append("unshare")
    assert "unshare" not in unconditional(default_profile([], arch="x86_64"))


# --- Localhost profiles ------------------------------------------------------------------

CRITEST_PROFILE = """{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [
         {
             "names": ["sethostname"],
             "action": "SCMP_ACT_ERRNO"
         }
     ]
}"""


def test_an_oci_profile_is_kept() -> None:
    assert parse_localhost_profile(CRITEST_PROFILE, arch="x86_64") == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
    }


def test_all_oci_fields_survive() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "value": 2080505856, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
                ],
            },
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        ],
    }
    parsed = parse_localhost_profile(json.dumps(profile), arch="x86_64")
    assert parsed["defaultErrnoRet"] == 38
    assert parsed["architectures"] == ["SCMP_ARCH_X86_64"]
    assert parsed["flags"] == ["SECCOMP_FILTER_FLAG_LOG"]
    assert parsed["syscalls"][0]["args"] == [
        {"index": 0, "value": 2080505856, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert parsed["syscalls"][1]["errnoRet"] == 13


def test_docker_arch_map_gives_this_machines_architectures() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [
            {
                "architecture": "SCMP_ARCH_X86_64",
                "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW"}],
    }
    x86 = parse_localhost_profile(json.dumps(profile), arch="x86_64")
    assert x86["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert x86["syscalls"] == [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
    arm = parse_localhost_profile(json.dumps(profile), arch="aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    both = dict(profile, architectures=["SCMP_ARCH_X86_64"])
    with pytest.raises(SpecError, match="architectures or archMap"):
        parse_localhost_profile(json.dumps(both), arch="x86_64")


def test_docker_includes_and_excludes() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {
                "names": ["arch_prctl"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"arches": ["amd64"]},
            },
            {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {
                "names": ["mount"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "excludes": {"caps": ["CAP_SYS_ADMIN"]},
                "comment": "docker's",
            },
        ],
    }
    text = json.dumps(profile)

    def names(parsed: dict[str, Any]) -> list[str]:
        return [n for rule in parsed["syscalls"] for n in rule["names"]]

    # capability includes/excludes are not applied (containerd keeps those rules)
    assert names(parse_localhost_profile(text, arch="x86_64")) == ["arch_prctl", "mount", "clone"]
    assert names(parse_localhost_profile(text, arch="aarch64")) == ["set_tls", "mount", "clone"]
    assert "comment" not in parse_localhost_profile(text, arch="x86_64")["syscalls"][-1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("{}", "defaultAction None"),
        ('{"defaultAction": "ALLOW"}', "defaultAction 'ALLOW'"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NO"}]}',
            r"syscalls\[0\]: action 'NO'",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], '
            '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}',
            r"args\[0\]: op 'EQ'",
        ),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}', "defaultErrnoRet"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}', "must be an object"),
    ],
)
def test_profiles_runc_would_refuse_are_refused_now(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_localhost_profile(text, arch="x86_64")
