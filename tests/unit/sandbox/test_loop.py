from __future__ import annotations

import anyio
import pytest

from criproxy.sandbox.loop import PodLoop

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_jobs_of_one_pod_run_one_at_a_time_in_order() -> None:
    loop = PodLoop("pod")
    trace: list[str] = []

    def job(name: str, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> str:
            trace.append(f"{name} start")
            await anyio.sleep(delay)
            trace.append(f"{name} end")
            return name

        return run

    results: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)

        async def call(name: str, delay: float) -> None:
            results.append(await loop.call(job(name, delay)))

        tg.start_soon(call, "a", 0.05)
        await anyio.sleep(0.01)
        loop.post(job("event", 0.0))
        tg.start_soon(call, "b", 0.0)
        await anyio.sleep(0.2)
        loop.close()
    assert trace == ["a start", "a end", "event start", "event end", "b start", "b end"]
    assert results == ["a", "b"]


async def test_errors_reach_the_caller_and_the_loop_goes_on() -> None:
    loop = PodLoop("pod")

    async def boom() -> None:
        raise ValueError("no")

    async def fine() -> int:
        return 7

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)
        with pytest.raises(ValueError, match="no"):
            await loop.call(boom)
        loop.post(boom)  # a failing event job is logged, not fatal
        assert await loop.call(fine) == 7
        loop.close()


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
