"""Seccomp profiles in the OCI `linux.seccomp` form: criproxy's RuntimeDefault and Localhost.

The default profile has the effect of containerd's (and Docker's): everything a normal
program needs is allowed, and the rest fails with EPERM. Calls that escape or reshape
the container (mount, unshare, setns, bpf, perf_event_open, reboot, kexec_load, the
keyring calls, ...) are allowed only when the container holds the capability that
would let it make them anyway, so the profile depends on the container's capabilities.
It assumes a kernel of 4.8 or later (ptrace can no longer bypass seccomp there).
"""

from __future__ import annotations

import json
import platform
from typing import TYPE_CHECKING, Any

from criproxy.oci.capabilities import normalize
from criproxy.oci.spec import SpecError

if TYPE_CHECKING:
    from collections.abc import Iterable

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        ERRNO,
        "SCMP_ACT_TRACE",
        ALLOW,
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)

# What any container may call. `socket`, `personality` and `clone` have argument rules
# below; the rest of the blocked calls are gated by capabilities.
_ALLOWED = """
    accept accept4 access adjtimex alarm
    bind brk
    cachestat capget capset chdir chmod chown chown32 clock_adjtime clock_adjtime64
    clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
    clock_nanosleep_time64 close close_range connect copy_file_range creat
    dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
    faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
    fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
    fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
    getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
    getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32 getxattr
    getxattrat
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl ioprio_get
    ioprio_set ipc
    kill
    _llseek landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
    lgetxattr link linkat listen listmount listxattr listxattrat llistxattr lremovexattr lseek
    lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat lstat64
    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    _newselect name_to_handle_at nanosleep newfstatat
    open openat openat2
    pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease process_vm_readv
    process_vm_writev pselect6 pselect6_time64 ptrace pwrite64 pwritev pwritev2
    read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir
    rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg
    sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid
    setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid
    setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid
    setsockopt setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown
    sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
    stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs
    sysinfo
    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes
    vfork vmsplice
    wait4 waitid waitpid write writev
""".split()  # noqa: SIM905 (one word per call reads better than 350 quoted ones)

# Calls a capability makes harmless (the kernel checks the capability itself).
_BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# Per machine: the seccomp architectures a process may use, and calls only it has.
_ARCHES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "x86_64": (
        ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
        ("arch_prctl", "modify_ldt"),
    ),
    "aarch64": (
        ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
        (
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ),
    ),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_NATIVE = {"x86_64": ("SCMP_ARCH_X86_64", "amd64"), "aarch64": ("SCMP_ARCH_AARCH64", "arm64")}
"""A machine's own seccomp architecture and its Go name (Docker's `arches` filters)."""

# The namespace flags of clone(2): without CAP_SYS_ADMIN, clone may not create any.
_CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, PER_LINUX32, UNAME26 (alone and with PER_LINUX32), and the query value."""
_AF_ALG = 38
_AF_VSOCK = 40


def _rule(names: Iterable[str], *args: dict[str, Any], action: str = ALLOW) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": action}
    if args:
        rule["args"] = list(args)
    return rule


def _arg(index: int, op: str, value: int, value_two: int | None = None) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value}
    if value_two is not None:
        arg["valueTwo"] = value_two
    arg["op"] = op
    return arg


def _machine(arch: str) -> str:
    return _MACHINE_ALIASES.get(arch, arch)


def default_profile(capabilities: Iterable[str], arch: str | None = None) -> dict[str, Any]:
    """criproxy's RuntimeDefault profile for a container with these (bounding) capabilities.

    `arch` is a machine name (`x86_64`, `aarch64`; default: this machine's). On other
    machines the profile names no architectures (runc then filters the native one only)
    and has no machine-specific calls.
    """
    machine = _machine(arch or platform.machine())
    arches, machine_calls = _ARCHES.get(machine, ((), ()))
    caps = list(dict.fromkeys(normalize(c) for c in capabilities))

    syscalls = [_rule(_ALLOWED)]
    # socket(2) for every address family but AF_ALG and AF_VSOCK. Each rule holds one
    # condition: runc splits conditions on one argument into rules that OR together.
    syscalls += [
        _rule(["socket"], _arg(0, "SCMP_CMP_LT", _AF_ALG)),
        _rule(["socket"], _arg(0, "SCMP_CMP_EQ", _AF_ALG + 1)),
        _rule(["socket"], _arg(0, "SCMP_CMP_GT", _AF_VSOCK)),
    ]
    syscalls += [_rule(["personality"], _arg(0, "SCMP_CMP_EQ", p)) for p in _PERSONALITIES]
    if machine_calls:
        syscalls.append(_rule(machine_calls))
    syscalls += [_rule(_BY_CAPABILITY[cap]) for cap in caps if cap in _BY_CAPABILITY]
    if "CAP_SYS_ADMIN" not in caps:
        # clone's flags are its first argument everywhere criproxy builds profiles for.
        syscalls.append(_rule(["clone"], _arg(0, "SCMP_CMP_MASKED_EQ", _CLONE_NAMESPACE_FLAGS, 0)))
        # clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libcs fall
        # back to clone, where the flag rule applies (moby/moby#42681).
        clone3 = _rule(["clone3"], action=ERRNO)
        clone3["errnoRet"] = ENOSYS
        syscalls.append(clone3)

    profile: dict[str, Any] = {"defaultAction": ERRNO, "defaultErrnoRet": EPERM}
    if arches:
        profile["architectures"] = list(arches)
    profile["syscalls"] = syscalls
    return profile


def parse_localhost_profile(
    text: str,
    *,
    arch: str | None = None,
) -> dict[str, Any]:
    """A Localhost profile file (OCI or Docker format) as an OCI `linux.seccomp` object.

    Docker's extras are resolved: `archMap` gives the architectures of this machine when
    `architectures` is absent, a rule's `name` joins its `names`, and `includes`/`excludes`
    keep or drop a rule by architecture (their capability lists are ignored, as containerd
    does: every such rule is kept). Raises SpecError on anything runc
    would refuse later: bad JSON, a missing or unknown action, an unknown operator.
    """
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SpecError(f"seccomp profile is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError("seccomp profile must be a JSON object")
    default_action = raw.get("defaultAction")
    if default_action not in ACTIONS:
        raise SpecError(f"seccomp profile: defaultAction {default_action!r} is not an action")

    machine = _machine(arch or platform.machine())
    native = _NATIVE.get(machine, (f"SCMP_ARCH_{machine.upper()}", machine))

    profile: dict[str, Any] = {"defaultAction": default_action}
    if "defaultErrnoRet" in raw:
        profile["defaultErrnoRet"] = _uint(raw["defaultErrnoRet"], "defaultErrnoRet")
    arches = _architectures(raw, native[0])
    if arches:
        profile["architectures"] = arches
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if raw.get(key):
            profile[key] = raw[key]
    syscalls = []
    for i, entry in enumerate(raw.get("syscalls") or ()):
        rule = _syscall(entry, i)
        if rule is not None and _applies(entry, native[1]):
            syscalls.append(rule)
    if syscalls:
        profile["syscalls"] = syscalls
    return profile


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"seccomp profile: {what} must be a non-negative integer")
    return value


def _architectures(raw: dict[str, Any], native: str) -> list[str]:
    if raw.get("architectures"):
        if raw.get("archMap"):
            raise SpecError("seccomp profile: use either architectures or archMap, not both")
        return [str(a) for a in raw["architectures"]]
    for entry in raw.get("archMap") or ():
        if isinstance(entry, dict) and entry.get("architecture") == native:
            return [native, *(str(a) for a in entry.get("subArchitectures") or ())]
    return []


def _syscall(entry: Any, i: int) -> dict[str, Any] | None:
    where = f"seccomp profile: syscalls[{i}]"
    if not isinstance(entry, dict):
        raise SpecError(f"{where} must be an object")
    names = [str(n) for n in entry.get("names") or ()]
    if entry.get("name"):
        names.insert(0, str(entry["name"]))
    action = entry.get("action")
    if action not in ACTIONS:
        raise SpecError(f"{where}: action {action!r} is not an action")
    if not names:
        return None
    rule: dict[str, Any] = {"names": names, "action": action}
    if "errnoRet" in entry:
        rule["errnoRet"] = _uint(entry["errnoRet"], f"syscalls[{i}].errnoRet")
    args = []
    for j, arg in enumerate(entry.get("args") or ()):
        if not isinstance(arg, dict) or arg.get("op") not in OPERATORS:
            raise SpecError(f"{where}.args[{j}]: op {arg.get('op')!r} is not an operator")
        parsed = {
            "index": _uint(arg.get("index", 0), "index"),
            "value": _uint(arg.get("value", 0), "value"),
        }
        if arg.get("valueTwo"):
            parsed["valueTwo"] = _uint(arg["valueTwo"], "valueTwo")
        args.append(parsed | {"op": arg["op"]})
    if args:
        rule["args"] = args
    return rule


def _applies(entry: dict[str, Any], go_arch: str) -> bool:
    """Docker's includes/excludes filters by architecture (Go's names: `amd64`, `arm64`);
    minKernel is taken as satisfied."""
    includes = entry.get("includes") or {}
    excludes = entry.get("excludes") or {}

    def arch_listed(arches: Any) -> bool:
        return go_arch in (str(a) for a in arches or ())

    if includes.get("arches") and not arch_listed(includes["arches"]):
        return False
    return not (excludes.get("arches") and arch_listed(excludes["arches"]))
