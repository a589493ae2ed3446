from __future__ import annotations


def test_sandbox_record_round_trips_through_json() -> None:
    from criproxy.sandbox.model import (
        DnsSettings,
        PodConfig,
        PodMetadata,
        PodSecurity,
        PortMappingConfig,
        Sandbox,
    )

    sandbox = Sandbox(
        id="x" * 64,
        config=PodConfig(
            metadata=PodMetadata("web", "uid", "ns", 2),
            hostname="web",
            dns=DnsSettings(("10.0.0.10",), ("svc",), ("ndots:5",)),
            port_mappings=(PortMappingConfig("tcp", 80, 8080, "127.0.0.1"),),
            labels={"a": "b"},
            sysctls={"net.ipv4.ip_forward": "1"},
            security=PodSecurity(run_as_user=1000, supplemental_groups=(1, 2)),
        ),
        runtime_handler="runc",
        image="registry.k8s.io/pause:3.10",
        created_at_ns=123,
        state="ready",
        ip="10.1.0.2",
        additional_ips=("fd00::2",),
        cni_result={"cniVersion": "1.0.0"},
    )
    assert Sandbox.from_json(sandbox.to_json()) == sandbox
    # byte for byte what records written before the encoder without deep copies held
    import dataclasses
    import json

    assert sandbox.to_json() == json.dumps(dataclasses.asdict(sandbox), sort_keys=True).encode()


def test_resources_in_a_record_of_an_older_version_read_as_dataclasses() -> None:
    """Older records kept UpdatePodSandboxResources' values in protobuf's JSON form."""
    import json

    from criproxy.oci.container import ContainerResources, HugepageLimit
    from criproxy.sandbox.model import PodConfig, PodMetadata, Sandbox

    current = Sandbox("s", PodConfig(PodMetadata("n", "u", "ns")), "", "pause", 1)
    raw = json.loads(current.to_json())
    raw["resources"] = {
        "cpu_shares": "512",
        "memory_limit_in_bytes": "268435456",
        "hugepage_limits": [{"page_size": "2MB", "limit": "1048576"}],
    }
    raw["overhead"] = {"cpu_shares": "10"}
    sandbox = Sandbox.from_json(json.dumps(raw).encode())
    assert sandbox.resources == ContainerResources(
        cpu_shares=512,
        memory_limit_in_bytes=268435456,
        hugepage_limits=(HugepageLimit("2MB", 1048576),),
    )
    assert sandbox.overhead == ContainerResources(cpu_shares=10)
    assert Sandbox.from_json(sandbox.to_json()) == sandbox
