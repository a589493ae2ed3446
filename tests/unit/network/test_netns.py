"""Unprivileged checks of the netns helpers; creating namespaces is in the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from criproxy.network.netns import is_netns, remove_netns


def test_the_processs_own_netns_is_a_netns() -> None:
    assert is_netns(Path("/proc/self/ns/net"))


@pytest.mark.parametrize("other", ["/proc/self/ns/pid", "/proc/self/ns/mnt", "/etc/hostname"])
def test_other_files_and_namespaces_are_not(other: str) -> None:
    assert not is_netns(Path(other))


def test_a_missing_or_plain_pin_is_not_a_netns(tmp_path: Path) -> None:
    assert not is_netns(tmp_path / "missing")
    (tmp_path / "pin").touch()
    assert not is_netns(tmp_path / "pin")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_removing_a_missing_pin_is_fine(tmp_path: Path, anyio_backend: str) -> None:
    await remove_netns(tmp_path / "never-created")
