"""The Cni runner against fake plugins: environment, chaining, cleanup on failure, DEL, and
the reaper thread its run() owns."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import anyio
import pytest

from criproxy.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from criproxy.network.cni import Cni, CniPluginError, CniRequest, PortMapping
from tests.unit.network.cni.conftest import FakeCni

pytestmark = pytest.mark.anyio

LIVE_NETNS = "/proc/self/ns/net"  # a real netns path, so teardown keeps CNI_NETNS as given
ARGS = {
    "IgnoreUnknown": "1",
    "K8S_POD_NAMESPACE": "default",
    "K8S_POD_NAME": "web",
    "K8S_POD_INFRA_CONTAINER_ID": "sb1",
    "K8S_POD_UID": "uid-1",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_cni(fake: FakeCni, timeout: float = 30.0) -> Cni:
    return Cni(str(fake.conf_dir), (str(fake.bin_dir / "none"), str(fake.bin_dir)), timeout)


def request(**kwargs: Any) -> CniRequest:
    return CniRequest(**{"container_id": "sb1", "netns": LIVE_NETNS, "args": ARGS, **kwargs})


def order(calls: list[dict[str, Any]]) -> list[str]:
    return [c["plugin"] for c in calls]


async def test_setup_runs_loopback_and_the_chain_with_the_cni_environment(
    fake_cni: FakeCni,
) -> None:
    fake_cni.write_conflist([{"type": "alpha"}, {"type": "beta"}])
    result = await make_cni(fake_cni).setup(request())

    assert result.primary_ip() == "10.123.200.7"
    lo = fake_cni.calls_of("ADD", "cni-loopback")
    assert order(lo) == ["loopback"]
    assert lo[0]["env"]["CNI_IFNAME"] == "lo"
    assert lo[0]["conf"]["cniVersion"] == "0.3.1"
    chain = fake_cni.calls_of("ADD")
    assert order(chain) == ["alpha", "beta"]
    env = chain[0]["env"]
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "sb1",
        "CNI_NETNS": LIVE_NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1",
        "CNI_PATH": f"{fake_cni.bin_dir / 'none'}{os.pathsep}{fake_cni.bin_dir}",
    }


async def test_each_plugin_gets_the_previous_result_and_its_capabilities(
    fake_cni: FakeCni,
) -> None:
    fake_cni.write_conflist(
        [
            {"type": "alpha", "fake": {"ADD": {"address": "10.123.201.4/24"}}},
            {"type": "beta", "capabilities": {"portMappings": True, "bandwidth": True}},
        ]
    )
    await make_cni(fake_cni).setup(request(port_mappings=(PortMapping(8080, 80),)))
    alpha, beta = fake_cni.calls_of("ADD")
    assert "prevResult" not in alpha["conf"]
    assert "runtimeConfig" not in alpha["conf"]
    assert beta["conf"]["prevResult"]["ips"][0]["address"] == "10.123.201.4/24"
    assert beta["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert beta["conf"]["name"] == "fakenet"


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
async def test_older_config_versions_give_the_same_model(fake_cni: FakeCni, version: str) -> None:
    fake_cni.write_conflist([{"type": "alpha"}], version=version)
    result = await make_cni(fake_cni).setup(request())
    assert result.primary_ip() == "10.123.200.7"
    assert result.raw["cniVersion"] == version
    assert result.raw["ips"][0]["version"] == "4"


async def test_a_result_without_cni_version_is_taken_as_the_configs(fake_cni: FakeCni) -> None:
    raw = {"interfaces": [{"name": "eth0"}], "ips": [{"interface": 0, "address": "10.123.0.3/24"}]}
    fake_cni.write_conflist([{"type": "alpha", "fake": {"ADD": {"result": raw}}}])
    result = await make_cni(fake_cni).setup(request())
    assert result.raw["cniVersion"] == "1.0.0"
    assert result.primary_ip() == "10.123.0.3"


async def test_prev_result_is_converted_to_the_config_version(fake_cni: FakeCni) -> None:
    old = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0"}],
        "ips": [{"version": "4", "interface": 0, "address": "10.123.0.3/24"}],
    }
    fake_cni.write_conflist([{"type": "alpha", "fake": {"ADD": {"result": old}}}, {"type": "beta"}])
    result = await make_cni(fake_cni).setup(request())
    beta = fake_cni.calls_of("ADD")[1]
    assert beta["conf"]["prevResult"]["cniVersion"] == "1.0.0"
    assert "version" not in beta["conf"]["prevResult"]["ips"][0]
    assert result.raw["cniVersion"] == "1.0.0"


async def test_cni_versions_list_picks_the_highest_supported(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}], version="0.4.0", cniVersions=["1.0.0", "9.9.9"])
    await make_cni(fake_cni).setup(request())
    assert fake_cni.calls_of("ADD")[0]["conf"]["cniVersion"] == "1.0.0"


async def test_a_failing_plugin_raises_its_cni_error_after_deleting_the_whole_chain(
    fake_cni: FakeCni,
) -> None:
    error = {"cniVersion": "1.0.0", "code": 11, "msg": "try again", "details": "busy"}
    fake_cni.write_conflist(
        [
            {"type": "alpha"},
            {"type": "beta", "fake": {"ADD": {"exit": 1, "stdout": json.dumps(error)}}},
            {"type": "gamma"},
        ]
    )
    with pytest.raises(CniPluginError) as caught:
        await make_cni(fake_cni).setup(request())
    err = caught.value
    assert isinstance(err, Internal)
    assert (err.plugin, err.code, err.msg, err.details, err.command) == (
        "beta",
        11,
        "try again",
        "busy",
        "ADD",
    )
    assert "'beta'" in err.message
    assert "try again" in err.message
    assert order(fake_cni.calls_of("ADD")) == ["alpha", "beta"]
    deletes = fake_cni.calls_of("DEL")
    assert order(deletes) == ["gamma", "beta", "alpha"]
    # what alpha returned goes along, so plugins can find what to remove
    assert deletes[0]["conf"]["prevResult"]["ips"][0]["address"] == "10.123.200.7/24"
    assert order(fake_cni.calls_of("DEL", "cni-loopback")) == ["loopback"]


async def test_a_failed_cleanup_does_not_hide_the_original_error(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist(
        [
            {"type": "alpha", "fake": {"DEL": {"exit": 1, "stderr": "del broke"}}},
            {"type": "beta", "fake": {"ADD": {"exit": 1, "stderr": "add broke"}}},
        ]
    )
    with pytest.raises(CniPluginError, match="add broke"):
        await make_cni(fake_cni).setup(request())
    assert order(fake_cni.calls_of("DEL")) == ["beta", "alpha"]


async def test_a_failing_loopback_also_deletes_the_chain(fake_cni: FakeCni) -> None:
    (fake_cni.bin_dir / "loopback").write_text("#!/bin/sh\necho 'lo broke' >&2\nexit 1\n")
    fake_cni.write_conflist([{"type": "alpha"}])
    with pytest.raises(CniPluginError, match="lo broke"):
        await make_cni(fake_cni).setup(request())
    assert order(fake_cni.calls_of("DEL")) == ["alpha"]


async def test_a_hung_plugin_times_out_and_is_cleaned_up(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}, {"type": "beta", "fake": {"ADD": {"sleep": 30}}}])
    with pytest.raises(DeadlineExceeded, match="beta"):
        await make_cni(fake_cni, timeout=1.0).setup(request())
    assert order(fake_cni.calls_of("DEL")) == ["beta", "alpha"]


async def test_no_ip_for_the_pod_interface_is_an_error(fake_cni: FakeCni) -> None:
    raw = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}
    fake_cni.write_conflist([{"type": "alpha", "fake": {"ADD": {"result": raw}}}])
    with pytest.raises(Internal, match="no IP for eth0"):
        await make_cni(fake_cni).setup(request())
    assert order(fake_cni.calls_of("DEL")) == ["alpha"]


async def test_invalid_result_is_an_error(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha", "fake": {"ADD": {"stdout": "not json"}}}])
    with pytest.raises(CniPluginError, match="invalid result"):
        await make_cni(fake_cni).setup(request())
    assert order(fake_cni.calls_of("DEL")) == ["alpha"]


async def test_missing_config_is_network_not_ready(fake_cni: FakeCni) -> None:
    with pytest.raises(FailedPrecondition, match="network not ready: no CNI config"):
        await make_cni(fake_cni).setup(request())
    assert fake_cni.calls() == []


async def test_config_changes_apply_to_the_next_call(fake_cni: FakeCni) -> None:
    cni = make_cni(fake_cni)
    fake_cni.write_conflist([{"type": "alpha"}])
    await cni.setup(request())
    fake_cni.write_conflist([{"type": "beta"}])
    await cni.setup(request())
    assert order(fake_cni.calls_of("ADD")) == ["alpha", "beta"]


@pytest.mark.parametrize(
    "bad", [{"container_id": "-x"}, {"container_id": ""}, {"ifname": "a/b"}, {"ifname": "x" * 16}]
)
async def test_invalid_requests_run_no_plugin(fake_cni: FakeCni, bad: dict[str, str]) -> None:
    fake_cni.write_conflist([{"type": "alpha"}])
    with pytest.raises(InvalidArgument):
        await make_cni(fake_cni).setup(request(**bad))
    assert fake_cni.calls() == []


async def test_teardown_deletes_in_reverse_with_the_stored_result(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}, {"type": "beta"}, {"type": "gamma"}])
    cni = make_cni(fake_cni)
    result = await cni.setup(request())
    fake_cni.reset()
    await cni.teardown(request(), result.raw)
    deletes = fake_cni.calls_of("DEL")
    assert order(deletes) == ["gamma", "beta", "alpha"]
    assert all(d["conf"]["prevResult"] == result.raw for d in deletes)
    assert all(d["env"]["CNI_NETNS"] == LIVE_NETNS for d in deletes)
    lo = fake_cni.calls_of("DEL", "cni-loopback")
    assert lo[0]["env"]["CNI_IFNAME"] == "lo"
    assert "prevResult" not in lo[0]["conf"]


async def test_teardown_converts_the_stored_result_to_the_current_config_version(
    fake_cni: FakeCni,
) -> None:
    fake_cni.write_conflist([{"type": "alpha"}], version="1.0.0")
    cni = make_cni(fake_cni)
    result = await cni.setup(request())
    fake_cni.write_conflist([{"type": "alpha"}], version="0.4.0")
    await cni.teardown(request(), result.raw)
    prev = fake_cni.calls_of("DEL")[0]["conf"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0"
    assert prev["ips"][0]["version"] == "4"


async def test_teardown_sends_no_prev_result_before_cni_0_4_0(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}], version="0.3.1")
    cni = make_cni(fake_cni)
    result = await cni.setup(request())
    await cni.teardown(request(), result.raw)
    assert "prevResult" not in fake_cni.calls_of("DEL")[0]["conf"]


async def test_teardown_of_a_gone_netns_passes_an_empty_netns(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}])
    await make_cni(fake_cni).teardown(request(netns="/run/criproxy/netns/gone"), None)
    deletes = fake_cni.calls_of("DEL")
    assert order(deletes) == ["alpha"]
    assert deletes[0]["env"]["CNI_NETNS"] == ""
    assert fake_cni.calls_of("DEL", "cni-loopback") == []  # lo went with the netns


async def test_teardown_tries_every_plugin_and_raises_once(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist(
        [
            {"type": "alpha", "fake": {"DEL": {"exit": 1, "stderr": "alpha broke"}}},
            {"type": "beta"},
            {"type": "gamma", "fake": {"DEL": {"exit": 1, "stderr": "gamma broke"}}},
        ]
    )
    with pytest.raises(Internal) as caught:
        await make_cni(fake_cni).teardown(request(), None)
    assert "alpha broke" in caught.value.message
    assert "gamma broke" in caught.value.message
    assert order(fake_cni.calls_of("DEL")) == ["gamma", "beta", "alpha"]


async def test_teardown_tolerates_what_is_already_gone(fake_cni: FakeCni) -> None:
    gone = {"code": 3, "msg": "container not found"}
    fake_cni.write_conflist(
        [{"type": "alpha", "fake": {"DEL": {"exit": 1, "stdout": json.dumps(gone)}}}]
    )
    await make_cni(fake_cni).teardown(request(), None)


async def test_teardown_twice_is_fine(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}])
    cni = make_cni(fake_cni)
    result = await cni.setup(request())
    await cni.teardown(request(), result.raw)
    await cni.teardown(request(), result.raw)
    assert order(fake_cni.calls_of("DEL")) == ["alpha", "alpha"]


async def test_teardown_without_config_still_fails_clearly(fake_cni: FakeCni) -> None:
    with pytest.raises(FailedPrecondition, match="network not ready"):
        await make_cni(fake_cni).teardown(request(), None)


async def test_check_runs_the_chain_in_order_with_the_result(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}, {"type": "beta"}])
    cni = make_cni(fake_cni)
    result = await cni.setup(request())
    await cni.check(request(), result.raw)
    checks = fake_cni.calls_of("CHECK")
    assert order(checks) == ["alpha", "beta"]
    assert checks[0]["conf"]["prevResult"] == result.raw


async def test_check_is_skipped_when_disabled_or_before_0_4_0(fake_cni: FakeCni) -> None:
    cni = make_cni(fake_cni)
    fake_cni.write_conflist([{"type": "alpha"}], disableCheck=True)
    await cni.check(request(), None)
    fake_cni.write_conflist([{"type": "alpha"}], version="0.3.1")
    await cni.check(request(), None)
    assert fake_cni.calls_of("CHECK") == []


async def test_a_running_cni_owns_its_reaper_thread_and_ends_it(fake_cni: FakeCni) -> None:
    fake_cni.write_conflist([{"type": "alpha"}])
    cni = make_cni(fake_cni)

    def reapers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cni-reaper"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(cni.run)
        result = await cni.setup(request())
        assert len(reapers()) == 1
        await cni.teardown(request(), result.raw)
        tg.cancel_scope.cancel()
    assert reapers() == []
    assert order(fake_cni.calls_of("DEL")) == ["alpha"]


async def test_the_config_is_read_again_only_when_it_changed(
    fake_cni: FakeCni, monkeypatch: pytest.MonkeyPatch
) -> None:
    import criproxy.network.cni.cni as cni_module

    reads: list[str] = []
    real = cni_module.load_network_config

    def counting(conf_dir: str, bin_dirs: tuple[str, ...]) -> Any:
        reads.append(conf_dir)
        return real(conf_dir, bin_dirs)

    monkeypatch.setattr(cni_module, "load_network_config", counting)
    cni = make_cni(fake_cni)
    fake_cni.write_conflist([{"type": "alpha"}])
    await cni.setup(request())
    await cni.teardown(request(), None)
    assert len(reads) == 1, "an unchanged config is not parsed again"

    (fake_cni.conf_dir / "05-first.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "newer", "plugins": [{"type": "beta"}]})
    )
    fake_cni.reset()
    await cni.setup(request())
    assert order(fake_cni.calls_of("ADD", "newer")) == ["beta"], "a new first file applies"

    os.chmod(fake_cni.bin_dir / "beta", 0o644)  # its plugin gone: the network is not ready
    with pytest.raises(FailedPrecondition, match="beta"):
        await cni.setup(request())
