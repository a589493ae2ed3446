"""CRI pod sandbox messages <-> the sandbox domain: every refusal names its field, every enum
converts both ways, and the views and List filters show what the domain holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert import sandbox as sandbox_cri
from criproxy.errors import InvalidArgument
from criproxy.oci.container import ContainerResources, UsernsConfig
from criproxy.oci.spec import IdMapping
from criproxy.sandbox.model import (
    DnsSettings,
    PodConfig,
    PodMetadata,
    PodSecurity,
    PortMappingConfig,
    Sandbox,
)
from tests.unit.cri.fields import set_field

NS = "config.linux.security_context.namespace_options"
USERNS = f"{NS}.userns_options"

Mutation = Callable[[api_pb2.PodSandboxConfig], Any]


def _config() -> api_pb2.PodSandboxConfig:
    """The least a kubelet sends: metadata, and POD/CONTAINER/POD namespaces (the defaults)."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", uid="uid-1", namespace="ns", attempt=2)
    )
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    return config


def _converted(*mutations: Mutation) -> PodConfig:
    config = _config()
    for mutate in mutations:
        mutate(config)
    return sandbox_cri.pod_config(config)


def _refusal(*mutations: Mutation) -> str:
    with pytest.raises(InvalidArgument) as err:
        _converted(*mutations)
    return err.value.message


def _options(c: api_pb2.PodSandboxConfig) -> api_pb2.NamespaceOption:
    return c.linux.security_context.namespace_options


def _ns(**modes: int) -> Mutation:
    def mutate(c: api_pb2.PodSandboxConfig) -> None:
        for name, mode in modes.items():
            setattr(_options(c), name, mode)

    return mutate


def _mapping(container_id: int = 0, host_id: int = 100000, length: int = 65536) -> Any:
    return api_pb2.IDMapping(container_id=container_id, host_id=host_id, length=length)


def _userns(
    mode: int = api_pb2.POD, uids: list[Any] | None = None, gids: list[Any] | None = None
) -> Mutation:
    def mutate(c: api_pb2.PodSandboxConfig) -> None:
        _options(c).userns_options.CopyFrom(
            api_pb2.UserNamespace(
                mode=mode,
                uids=[_mapping()] if uids is None else uids,
                gids=[_mapping()] if gids is None else gids,
            )
        )

    return mutate


def _port(**fields: Any) -> Mutation:
    return lambda c: c.port_mappings.add(**{"container_port": 80, **fields})


def _dns(**fields: list[str]) -> Mutation:
    return lambda c: c.dns_config.CopyFrom(api_pb2.DNSConfig(**fields))


def _sysctl(name: str) -> Mutation:
    return lambda c: c.linux.sysctls.update({name: "1"})


def _seccomp(profile_type: int, ref: str = "") -> Mutation:
    return lambda c: c.linux.security_context.seccomp.CopyFrom(
        api_pb2.SecurityProfile(profile_type=profile_type, localhost_ref=ref)
    )


# --- pod_config: every refusal ----------------------------------------------------------


def test_metadata_is_required() -> None:
    with pytest.raises(InvalidArgument, match=r"^config\.metadata is required$"):
        sandbox_cri.pod_config(api_pb2.PodSandboxConfig())


@pytest.mark.parametrize("field", ["name", "uid", "namespace"])
def test_each_metadata_field_is_required(field: str) -> None:
    assert _refusal(set_field(f"metadata.{field}", "")) == f"config.metadata.{field} is required"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        pytest.param(
            set_field("log_directory", "var/log/pods/x"),
            "config.log_directory 'var/log/pods/x' must be an absolute path",
            id="relative-log-directory",
        ),
        pytest.param(
            set_field("hostname", "h" * 65),
            "config.hostname is longer than 64 characters",
            id="hostname-too-long",
        ),
    ],
)
def test_pod_fields_are_checked(mutation: Mutation, message: str) -> None:
    assert _refusal(mutation) == message


@pytest.mark.parametrize("kind", ["network", "pid", "ipc"])
def test_a_namespace_mode_the_api_does_not_define_is_refused(kind: str) -> None:
    assert _refusal(_ns(**{kind: 9})) == f"{NS}.{kind} 9 is not a namespace mode"


@pytest.mark.parametrize(
    ("kind", "mode", "message"),
    [
        ("network", api_pb2.CONTAINER, "namespace_options.network CONTAINER is not POD or NODE"),
        ("network", api_pb2.TARGET, "namespace_options.network TARGET is not POD or NODE"),
        ("pid", api_pb2.TARGET, "namespace_options.pid TARGET is not valid for a pod"),
        ("ipc", api_pb2.CONTAINER, "namespace_options.ipc CONTAINER is not POD or NODE"),
        ("ipc", api_pb2.TARGET, "namespace_options.ipc TARGET is not POD or NODE"),
    ],
)
def test_a_namespace_mode_a_pod_cannot_have_is_refused(kind: str, mode: int, message: str) -> None:
    assert _refusal(_ns(**{kind: mode})) == message


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        pytest.param(_userns(mode=9), f"{USERNS}.mode 9 is not a namespace mode", id="mode-9"),
        pytest.param(
            _userns(mode=api_pb2.NODE),
            f"{USERNS}: mappings given with mode NODE",
            id="node-with-mappings",
        ),
        pytest.param(
            _userns(mode=api_pb2.NODE, uids=[], gids=[_mapping()]),
            f"{USERNS}: mappings given with mode NODE",
            id="node-with-gids",
        ),
        pytest.param(
            _userns(mode=api_pb2.CONTAINER),
            f"{USERNS}.mode CONTAINER is not supported (only POD and NODE)",
            id="container",
        ),
        pytest.param(
            _userns(mode=api_pb2.TARGET),
            f"{USERNS}.mode TARGET is not supported (only POD and NODE)",
            id="target",
        ),
        pytest.param(
            _userns(uids=[]),
            f"{USERNS}.uids: exactly one mapping is supported, got 0",
            id="no-uids",
        ),
        pytest.param(
            _userns(gids=[_mapping(), _mapping(65536, 200000)]),
            f"{USERNS}.gids: exactly one mapping is supported, got 2",
            id="two-gids",
        ),
        pytest.param(
            _userns(uids=[_mapping(length=0)]),
            f"{USERNS}.uids: mapping length is 0",
            id="uid-length-0",
        ),
        pytest.param(
            _userns(gids=[_mapping(length=0)]),
            f"{USERNS}.gids: mapping length is 0",
            id="gid-length-0",
        ),
        pytest.param(
            _userns(uids=[_mapping(container_id=1)]),
            f"{USERNS}: mappings must start at container id 0",
            id="uids-not-from-0",
        ),
        pytest.param(
            _userns(gids=[_mapping(container_id=1000)]),
            f"{USERNS}: mappings must start at container id 0",
            id="gids-not-from-0",
        ),
    ],
)
def test_user_namespace_options_are_checked(mutation: Mutation, message: str) -> None:
    assert _refusal(mutation) == message


@pytest.mark.parametrize("kind", ["network", "pid", "ipc"])
def test_a_pod_with_its_own_user_namespace_keeps_its_other_namespaces(kind: str) -> None:
    assert _refusal(_userns(), _ns(**{kind: api_pb2.NODE})) == (
        "a pod with its own user namespace cannot use the host's network, PID or IPC namespace"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"servers": ["10.0.0.10", "dns.example"]},
            "config.dns_config.servers[1] 'dns.example' is not an IP address",
        ),
        ({"options": ["ndots:5", ""]}, "config.dns_config.options[1] '' is not an option"),
        (
            {"options": ["ndots: 5"]},
            "config.dns_config.options[0] 'ndots: 5' is not an option",
        ),
        ({"searches": [""]}, "config.dns_config.searches[0] '' is not a domain"),
        (
            {"searches": ["svc.cluster.local", "a\tb"]},
            "config.dns_config.searches[1] 'a\\tb' is not a domain",
        ),
    ],
)
def test_dns_settings_are_checked(fields: dict[str, list[str]], message: str) -> None:
    assert _refusal(_dns(**fields)) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"container_port": 0}, "config.port_mappings[1].container_port 0 is not 1-65535"),
        ({"container_port": -1}, "config.port_mappings[1].container_port -1 is not 1-65535"),
        (
            {"container_port": 65536},
            "config.port_mappings[1].container_port 65536 is not 1-65535",
        ),
        ({"host_port": -1}, "config.port_mappings[1].host_port -1 is not 0-65535"),
        ({"host_port": 65536}, "config.port_mappings[1].host_port 65536 is not 0-65535"),
        ({"protocol": 7}, "config.port_mappings[1].protocol 7 is unknown"),
        (
            {"host_ip": "localhost"},
            "config.port_mappings[1].host_ip 'localhost' is not an IP",
        ),
    ],
)
def test_port_mappings_are_checked(fields: dict[str, Any], message: str) -> None:
    assert _refusal(_port(), _port(**fields)) == message


@pytest.mark.parametrize(
    ("name", "mutations", "message"),
    [
        ("Net.core.somaxconn", (), "'Net.core.somaxconn' is not a sysctl name"),
        ("net..core", (), "'net..core' is not a sysctl name"),
        ("net.core.", (), "'net.core.' is not a sysctl name"),
        ("kernel.panic", (), "'kernel.panic' is not namespaced; a pod may not set it"),
        ("vm.swappiness", (), "'vm.swappiness' is not namespaced; a pod may not set it"),
        ("kernel.shm", (), "'kernel.shm' is not namespaced; a pod may not set it"),
        (
            "net.core.somaxconn",
            (_ns(network=api_pb2.NODE),),
            "'net.core.somaxconn' cannot be set with the host network",
        ),
        (
            "net/ipv4/ip_forward",
            (_ns(network=api_pb2.NODE),),
            "'net/ipv4/ip_forward' cannot be set with the host network",
        ),
        (
            "kernel.shmmax",
            (_ns(ipc=api_pb2.NODE),),
            "'kernel.shmmax' cannot be set with the host IPC namespace",
        ),
        (
            "kernel/sem",
            (_ns(ipc=api_pb2.NODE),),
            "'kernel/sem' cannot be set with the host IPC namespace",
        ),
        (
            "fs.mqueue.msg_max",
            (_ns(ipc=api_pb2.NODE),),
            "'fs.mqueue.msg_max' cannot be set with the host IPC namespace",
        ),
    ],
)
def test_sysctls_are_checked(name: str, mutations: tuple[Mutation, ...], message: str) -> None:
    assert _refusal(*mutations, _sysctl(name)) == f"config.linux.sysctls: {message}"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        pytest.param(
            _seccomp(api_pb2.SecurityProfile.Localhost),
            "config.linux.security_context.seccomp: a Localhost profile needs localhost_ref",
            id="localhost-without-ref",
        ),
        pytest.param(
            _seccomp(7),
            "config.linux.security_context.seccomp.profile_type 7 is unknown",
            id="unknown-type",
        ),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "default"),
            "config.linux.security_context.seccomp_profile_path 'default' is not unconfined, "
            "runtime/default or localhost/<profile>",
            id="legacy-unknown",
        ),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "localhost/"),
            "config.linux.security_context.seccomp_profile_path 'localhost/' is not "
            "unconfined, runtime/default or localhost/<profile>",
            id="legacy-localhost-without-path",
        ),
    ],
)
def test_seccomp_profiles_are_checked(mutation: Mutation, message: str) -> None:
    assert _refusal(mutation) == message


# --- pod_config: what a valid request becomes -------------------------------------------


def test_the_least_config_gets_the_defaults() -> None:
    assert _converted() == PodConfig(
        metadata=PodMetadata("web", "uid-1", "ns", 2),
        network="pod",
        pid="container",
        ipc="pod",
        security=PodSecurity(),
    )


def test_a_full_config_is_carried_over() -> None:
    config = _config()
    config.hostname = "h" * 64
    config.log_directory = "/var/log/pods/ns_web_uid-1"
    config.labels["app"] = "web"
    config.annotations["note"] = "x"
    config.dns_config.CopyFrom(
        api_pb2.DNSConfig(servers=["10.0.0.10", "fd00::10"], searches=["ns.svc"], options=["a"])
    )
    config.port_mappings.add(protocol=api_pb2.UDP, container_port=53, host_port=5353)
    config.port_mappings.add(container_port=65535, host_ip="::1")
    config.linux.cgroup_parent = "/kubepods/pod1"
    config.linux.sysctls.update({"net.core.somaxconn": "1024", "kernel.shm_rmid_forced": "1"})
    ctx = config.linux.security_context
    ctx.run_as_user.value = 1000
    ctx.run_as_group.value = 0
    ctx.supplemental_groups.extend([5, 6])
    ctx.privileged = True
    ctx.readonly_rootfs = True
    ctx.selinux_options.CopyFrom(api_pb2.SELinuxOption(user="u", role="r", type="t", level="s0:c1"))
    assert sandbox_cri.pod_config(config) == PodConfig(
        metadata=PodMetadata("web", "uid-1", "ns", 2),
        hostname="h" * 64,
        log_directory="/var/log/pods/ns_web_uid-1",
        dns=DnsSettings(("10.0.0.10", "fd00::10"), ("ns.svc",), ("a",)),
        port_mappings=(
            PortMappingConfig("udp", 53, 5353),
            PortMappingConfig("tcp", 65535, 0, "::1"),
        ),
        labels={"app": "web"},
        annotations={"note": "x"},
        cgroup_parent="/kubepods/pod1",
        sysctls={"net.core.somaxconn": "1024", "kernel.shm_rmid_forced": "1"},
        security=PodSecurity(
            run_as_user=1000,
            run_as_group=0,
            supplemental_groups=(5, 6),
            privileged=True,
            readonly_rootfs=True,
            selinux_label="u:r:t:s0:c1",
        ),
        pid="container",
    )


@pytest.mark.parametrize(
    ("network", "pid", "ipc"),
    [
        ("pod", "pod", "pod"),
        ("pod", "container", "pod"),
        ("node", "node", "node"),
        ("node", "container", "pod"),
        ("pod", "node", "node"),
    ],
)
def test_the_namespace_modes_a_pod_may_have(network: str, pid: str, ipc: str) -> None:
    value = {mode: number for number, mode in sandbox_cri.MODES.items()}
    pod = _converted(_ns(network=value[network], pid=value[pid], ipc=value[ipc]))
    assert (pod.network, pod.pid, pod.ipc) == (network, pid, ipc)
    assert pod.host_network == (network == "node")


@pytest.mark.parametrize(
    ("number", "mode"),
    [
        (api_pb2.POD, "pod"),
        (api_pb2.CONTAINER, "container"),
        (api_pb2.NODE, "node"),
        (api_pb2.TARGET, "target"),
    ],
)
def test_namespace_mode_names_each_enum_value(number: int, mode: str) -> None:
    assert sandbox_cri.namespace_mode(number, "f") == mode


@pytest.mark.parametrize(
    ("protocol", "name"), [(api_pb2.TCP, "tcp"), (api_pb2.UDP, "udp"), (api_pb2.SCTP, "sctp")]
)
def test_each_protocol_converts(protocol: int, name: str) -> None:
    (port,) = _converted(_port(protocol=protocol, host_port=8080)).port_mappings
    assert port == PortMappingConfig(name, 80, 8080)


def test_dns_is_none_unless_given_and_kept_even_when_empty() -> None:
    assert _converted().dns is None
    assert _converted(_dns()).dns == DnsSettings()


@pytest.mark.parametrize(
    ("name", "mutations"),
    [
        ("net.ipv4.ip_unprivileged_port_start", ()),
        ("net/ipv4/conf/all/forwarding", ()),
        ("kernel.shmmax", ()),
        ("kernel.msgmnb", ()),
        ("kernel.sem", ()),
        ("fs.mqueue.queues_max", ()),
        ("kernel.shmall", (_ns(network=api_pb2.NODE),)),
        ("net.core.somaxconn", (_ns(ipc=api_pb2.NODE),)),
    ],
)
def test_namespaced_sysctls_are_kept_as_named(name: str, mutations: tuple[Mutation, ...]) -> None:
    assert _converted(*mutations, _sysctl(name)).sysctls == {name: "1"}


@pytest.mark.parametrize(
    ("mutation", "profile"),
    [
        pytest.param(lambda c: None, "", id="unset"),
        pytest.param(_seccomp(api_pb2.SecurityProfile.RuntimeDefault), "runtime/default"),
        pytest.param(_seccomp(api_pb2.SecurityProfile.Unconfined), "unconfined"),
        pytest.param(_seccomp(api_pb2.SecurityProfile.Localhost, "/p.json"), "localhost//p.json"),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "runtime/default"),
            "runtime/default",
            id="legacy-runtime-default",
        ),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "docker/default"),
            "runtime/default",
            id="legacy-docker-default",
        ),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "unconfined"),
            "unconfined",
            id="legacy-unconfined",
        ),
        pytest.param(
            set_field("linux.security_context.seccomp_profile_path", "localhost/p.json"),
            "localhost/p.json",
            id="legacy-localhost",
        ),
    ],
)
def test_seccomp_profiles_convert(mutation: Mutation, profile: str) -> None:
    assert _converted(mutation).security.seccomp == profile


def test_a_seccomp_profile_wins_over_the_legacy_field() -> None:
    pod = _converted(
        _seccomp(api_pb2.SecurityProfile.Unconfined),
        set_field("linux.security_context.seccomp_profile_path", "runtime/default"),
    )
    assert pod.security.seccomp == "unconfined"


def test_selinux_options_become_one_label() -> None:
    def options(**fields: str) -> Mutation:
        return lambda c: c.linux.security_context.selinux_options.CopyFrom(
            api_pb2.SELinuxOption(**fields)
        )

    assert _converted(options()).security.selinux_label == ""
    assert _converted(options(type="spc_t")).security.selinux_label == "::spc_t:"


def test_a_pod_user_namespace_keeps_its_mappings() -> None:
    uids, gids = [_mapping(0, 100000, 65536)], [_mapping(0, 200000, 65536)]
    assert _converted(_userns(uids=uids, gids=gids)).security.userns == UsernsConfig(
        (IdMapping(0, 100000, 65536),), (IdMapping(0, 200000, 65536),)
    )


def test_the_host_user_namespace_is_none() -> None:
    assert _converted(_userns(mode=api_pb2.NODE, uids=[], gids=[])).security.userns is None
    assert _converted().security.userns is None


def test_a_pod_user_namespace_allows_a_container_pid_namespace() -> None:
    assert _converted(_userns(), _ns(pid=api_pb2.CONTAINER)).pid == "container"


# --- views out --------------------------------------------------------------------------


def _sandbox(**changes: Any) -> Sandbox:
    pod = PodConfig(
        metadata=PodMetadata("web", "uid-1", "ns", 2),
        labels={"app": "web", "tier": "front"},
        annotations={"note": "x"},
        network="pod",
        pid="container",
        ipc="node",
    )
    sandbox = Sandbox(
        id="4f3e2d1c",
        config=pod,
        runtime_handler="runc",
        image="registry.k8s.io/pause:3.10",
        created_at_ns=1_700_000_000_000_000_000,
        state="ready",
        netns="/var/run/netns/cni-1",
        ip="10.88.0.5",
        additional_ips=("fd00::5",),
        pid=4242,
        files_dir="/var/lib/criproxy/sandboxes/4f3e2d1c",
        shm="/run/criproxy/sandboxes/4f3e2d1c/shm",
    )
    return sandbox.with_changes(**changes)


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ("ready", api_pb2.SANDBOX_READY),
        ("notready", api_pb2.SANDBOX_NOTREADY),
        ("creating", api_pb2.SANDBOX_NOTREADY),
    ],
)
def test_each_sandbox_state_converts(state: str, value: int) -> None:
    sandbox = _sandbox(state=state)
    assert sandbox_cri.to_pod_sandbox(sandbox).state == value
    assert sandbox_cri.to_status(sandbox).state == value


def test_to_pod_sandbox() -> None:
    assert sandbox_cri.to_pod_sandbox(_sandbox()) == api_pb2.PodSandbox(
        id="4f3e2d1c",
        metadata=api_pb2.PodSandboxMetadata(name="web", uid="uid-1", namespace="ns", attempt=2),
        state=api_pb2.SANDBOX_READY,
        created_at=1_700_000_000_000_000_000,
        labels={"app": "web", "tier": "front"},
        annotations={"note": "x"},
        runtime_handler="runc",
    )


def test_to_status() -> None:
    assert sandbox_cri.to_status(_sandbox()) == api_pb2.PodSandboxStatus(
        id="4f3e2d1c",
        metadata=api_pb2.PodSandboxMetadata(name="web", uid="uid-1", namespace="ns", attempt=2),
        state=api_pb2.SANDBOX_READY,
        created_at=1_700_000_000_000_000_000,
        network=api_pb2.PodSandboxNetworkStatus(
            ip="10.88.0.5", additional_ips=[api_pb2.PodIP(ip="fd00::5")]
        ),
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(
                options=api_pb2.NamespaceOption(
                    network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.NODE
                )
            )
        ),
        labels={"app": "web", "tier": "front"},
        annotations={"note": "x"},
        runtime_handler="runc",
    )


def test_a_pod_without_its_netns_shows_no_ip() -> None:
    """Once stopped, the pod's IP may already be another pod's."""
    network = sandbox_cri.to_status(_sandbox(state="notready", netns="")).network
    assert network == api_pb2.PodSandboxNetworkStatus()


@pytest.mark.parametrize("mode", ["pod", "container", "node", "target"])
def test_each_namespace_mode_converts_back(mode: str) -> None:
    pod = _sandbox().config
    sandbox = _sandbox(config=PodConfig(metadata=pod.metadata, network=mode, pid=mode, ipc=mode))
    options = sandbox_cri.to_status(sandbox).linux.namespaces.options
    assert options.network == options.pid == options.ipc
    assert sandbox_cri.namespace_mode(options.network, "f") == mode


def test_verbose_info_has_containerds_keys() -> None:
    result = {"interfaces": [{"name": "eth0"}], "ips": [{"interface": 0, "address": "1.2.3.4/24"}]}
    sandbox = _sandbox(
        cni_result=result,
        overhead=ContainerResources(cpu_shares=10),
        resources=ContainerResources(cpu_quota=-1, memory_limit_in_bytes=1 << 28),
    )
    (key,) = sandbox_cri.verbose_info(sandbox)
    info = json.loads(sandbox_cri.verbose_info(sandbox)[key])
    assert key == "info"
    assert info == {
        "pid": 4242,
        "processStatus": "running",
        "netNamespacePath": "/var/run/netns/cni-1",
        "netNamespaceClosed": False,
        "image": "registry.k8s.io/pause:3.10",
        "snapshotKey": "4f3e2d1c",
        "runtimeHandler": "runc",
        "cniResult": sandbox_cri.cni_result_view(result),
        "sandboxFiles": "/var/lib/criproxy/sandboxes/4f3e2d1c",
        "shm": "/run/criproxy/sandboxes/4f3e2d1c/shm",
        "overhead": {"cpu_shares": "10"},  # protobuf's JSON form, as the request gave them
        "resources": {"cpu_quota": "-1", "memory_limit_in_bytes": "268435456"},
    }


def test_verbose_info_of_a_stopped_pod() -> None:
    info = json.loads(sandbox_cri.verbose_info(_sandbox(state="notready", netns=""))["info"])
    assert (info["processStatus"], info["netNamespaceClosed"]) == ("stopped", True)
    assert info["cniResult"] is None


def test_cni_result_view_is_shaped_as_containerd_shows_it() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
            {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/cni-1"},
        ],
        "ips": [
            {"interface": 1, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
            {"interface": 1, "address": "fd00::5/64"},
            {"interface": 7, "address": "10.0.0.1/8"},  # no such interface: left out
            {"address": "10.0.0.2/8"},  # no interface: left out
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"], "options": ["ndots:5"]},
    }
    assert sandbox_cri.cni_result_view(result) == {
        "Interfaces": {
            "cni0": {
                "IPConfigs": [],
                "Mac": "aa:bb:cc:dd:ee:ff",
                "Sandbox": "",
                "PciID": "",
                "SocketPath": "",
            },
            "eth0": {
                "IPConfigs": [
                    {"IP": "10.88.0.5", "Gateway": "10.88.0.1"},
                    {"IP": "fd00::5", "Gateway": ""},
                ],
                "Mac": "11:22:33:44:55:66",
                "Sandbox": "/var/run/netns/cni-1",
                "PciID": "",
                "SocketPath": "",
            },
        },
        "DNS": [
            {
                "Nameservers": ["10.96.0.10"],
                "Domain": "",
                "Search": ["svc"],
                "Options": ["ndots:5"],
            }
        ],
        "Routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": None}],
    }


def test_cni_result_view_of_no_result_and_of_an_empty_one() -> None:
    assert sandbox_cri.cni_result_view(None) is None
    assert sandbox_cri.cni_result_view({}) == {"Interfaces": {}, "DNS": [], "Routes": []}


# --- List filters -----------------------------------------------------------------------


def _filter(**fields: Any) -> api_pb2.PodSandboxFilter:
    return api_pb2.PodSandboxFilter(**fields)


@pytest.mark.parametrize(
    ("flt", "resolved_id", "expected"),
    [
        pytest.param(_filter(), "", True, id="empty"),
        pytest.param(_filter(id="4f3e"), "4f3e2d1c", True, id="id-prefix-resolved-to-it"),
        pytest.param(_filter(id="4f3e"), "4f3e9999", False, id="id-resolved-to-another"),
        pytest.param(_filter(id="4f3e"), "", False, id="id-resolved-to-nothing"),
        pytest.param(
            _filter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)),
            "",
            True,
            id="state-ready",
        ),
        pytest.param(
            _filter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)),
            "",
            False,
            id="state-notready",
        ),
        pytest.param(_filter(label_selector={"app": "web"}), "", True, id="one-label"),
        pytest.param(
            _filter(label_selector={"app": "web", "tier": "front"}), "", True, id="two-labels"
        ),
        pytest.param(
            _filter(label_selector={"app": "web", "tier": "back"}), "", False, id="label-differs"
        ),
        pytest.param(_filter(label_selector={"zone": ""}), "", False, id="label-missing"),
        pytest.param(
            _filter(
                id="4f",
                state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY),
                label_selector={"tier": "front"},
            ),
            "4f3e2d1c",
            True,
            id="all-at-once",
        ),
    ],
)
def test_matches(flt: api_pb2.PodSandboxFilter, resolved_id: str, expected: bool) -> None:
    assert sandbox_cri.matches(_sandbox(), flt, resolved_id) is expected


def test_a_state_filter_of_ready_leaves_out_a_pod_being_created() -> None:
    ready = _filter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY))
    assert not sandbox_cri.matches(_sandbox(state="creating"), ready, "")
