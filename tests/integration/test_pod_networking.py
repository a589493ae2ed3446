"""What containers see of their pod: its network, ports, DNS, hostname, sysctls, PID modes.

Traffic goes only to loopback and to the pods and bridge this test's CNI network makes.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.containers_env import ContainerEnv
from tests.integration.helpers import wait_until
from tests.integration.pods_env import BRIDGE

HTTPD = (
    "mkdir -p /www && echo {body} > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"
)


def _listening(ctr_env: ContainerEnv, container: str) -> None:
    """Wait until httpd in `container` listens on 8080 (0x1F90, state 0A in /proc/net/tcp*)."""

    def listens() -> bool:
        table = ctr_env.exec(container, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout.decode()
        return any(
            f[1].endswith(":1F90") and f[3] == "0A"
            for f in (line.split() for line in table.splitlines())
            if len(f) > 3
        )

    wait_until(listens, 30, what=f"httpd listening in {container}")


def _serve(ctr_env: ContainerEnv, name: str, **pod_fields: object) -> tuple[str, str]:
    pod_id, pod = ctr_env.pod(name, **pod_fields)
    httpd = ctr_env.run(pod_id, pod, "httpd", args=[HTTPD.format(body=f"hello-from-{name}")])
    _listening(ctr_env, httpd)
    return pod_id, ctr_env.pods.status(pod_id).status.network.ip


def test_two_pods_reach_each_other_by_ip(ctr_env: ContainerEnv) -> None:
    _, server_ip = _serve(ctr_env, "server")
    client_pod, client = ctr_env.pod("client")
    container = ctr_env.run(client_pod, client, "client", args=["sleep 1000"])
    # busybox-static's wget crashes on glibc's NSS; nc speaks the HTTP by hand
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {server_ip} 8080"
    got = ctr_env.exec(container, "sh", "-c", request)
    assert got.stdout.endswith(b"\r\n\r\nhello-from-server\n"), (got.stdout, got.stderr)
    # the pod's own loopback is up (criproxy brings it up when it makes the netns)
    flags = ctr_env.exec(container, "cat", "/sys/class/net/lo/flags").stdout
    assert int(flags, 16) & 0x1
    local = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 8080"
    httpd = ctr_env.run(client_pod, client, "local-httpd", args=[HTTPD.format(body="local")])
    _listening(ctr_env, httpd)
    assert ctr_env.exec(httpd, "sh", "-c", local).stdout.endswith(b"local\n")


def test_host_port_reaches_the_server_in_the_pod(ctr_env: ContainerEnv) -> None:
    with socket.socket() as probe:  # a port nothing on this host uses right now
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    mapping = api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080, host_port=host_port)
    pod_id, _ = _serve(ctr_env, "hostport", port_mappings=[mapping])
    gateway = ctr_env.pods.status(pod_id).status.network.ip.rsplit(".", 2)[0] + ".0.1"
    for host in ("127.0.0.1", gateway):  # loopback, and the host's own address on the bridge
        with urllib.request.urlopen(f"http://{host}:{host_port}/", timeout=10) as response:
            assert response.read() == b"hello-from-hostport\n", host
    ctr_env.pods.stop(pod_id)
    with pytest.raises(OSError):  # the host port no longer answers once the pod stopped
        urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=2)


def test_host_network_pod_sees_the_hosts_interfaces(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod(
        "hostnet",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
            )
        ),
    )
    container = ctr_env.run(pod_id, pod, "c", args=["sleep 1000"])
    interfaces = ctr_env.exec(container, "ls", "/sys/class/net").stdout.decode().split()
    assert BRIDGE in interfaces  # the test network's bridge lives in the host's netns
    plain_pod, plain = ctr_env.pod("podnet")
    other = ctr_env.run(plain_pod, plain, "c", args=["sleep 1000"])
    assert BRIDGE not in ctr_env.exec(other, "ls", "/sys/class/net").stdout.decode().split()


def test_dns_hostname_and_sysctls_reach_the_container(ctr_env: ContainerEnv) -> None:
    pod_id, pod = ctr_env.pod(
        "named",
        hostname="web-0",
        dns_config=api_pb2.DNSConfig(
            servers=["10.96.0.10"], searches=["ns.svc.cluster.local"], options=["ndots:5"]
        ),
        linux=api_pb2.LinuxPodSandboxConfig(
            sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "80"}
        ),
    )
    container = ctr_env.run(pod_id, pod, "c", args=["sleep 1000"])
    resolv = ctr_env.exec(container, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.96.0.10" in resolv
    assert "search ns.svc.cluster.local" in resolv
    assert "options ndots:5" in resolv
    assert ctr_env.exec(container, "hostname").stdout == b"web-0\n"
    assert b"web-0" in ctr_env.exec(container, "cat", "/etc/hosts").stdout
    read = ctr_env.exec(container, "cat", "/proc/sys/kernel/shm_rmid_forced")
    assert read.stdout == b"1\n"
    port = ctr_env.exec(container, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert port.stdout == b"80\n"


def _pid_pod(ctr_env: ContainerEnv, name: str, pod_mode: int, container_mode: int) -> str:
    options = api_pb2.NamespaceOption(pid=pod_mode)
    pod_id, pod = ctr_env.pod(
        name,
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=options)
        ),
    )
    return ctr_env.run(
        pod_id,
        pod,
        "c",
        args=["sleep 1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=container_mode)
            )
        ),
    )


def test_pid_namespace_modes(ctr_env: ContainerEnv) -> None:
    def processes(container: str) -> str:
        return ctr_env.exec(container, "ps", "-o", "pid,args").stdout.decode()

    shared = _pid_pod(ctr_env, "pidpod", api_pb2.POD, api_pb2.POD)
    assert "sleep 2147483647" in processes(shared)  # the pause process is a neighbour
    own = _pid_pod(ctr_env, "pidctr", api_pb2.CONTAINER, api_pb2.CONTAINER)
    lines = processes(own).splitlines()[1:]
    assert "sleep 2147483647" not in processes(own)
    assert lines[0].split()[0] == "1"  # its own init
    host = _pid_pod(ctr_env, "pidnode", api_pb2.NODE, api_pb2.NODE)
    assert "criproxy" in processes(host)  # it sees the host's processes
