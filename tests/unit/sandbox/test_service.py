from __future__ import annotations

import pytest


def test_ambiguous_prefix_is_an_error_and_unknown_is_none() -> None:
    from criproxy.config import Config
    from criproxy.errors import InvalidArgument
    from criproxy.sandbox.model import PodConfig, PodMetadata, Sandbox
    from criproxy.sandbox.service import SandboxService

    service = SandboxService(Config(), None, None)  # type: ignore[arg-type]
    service._recovered.set()
    for sandbox_id in ("abc1" + "0" * 60, "abc2" + "0" * 60):
        service._sandboxes[sandbox_id] = Sandbox(
            sandbox_id, PodConfig(PodMetadata("n", "u", "ns")), "runc", "pause", 1
        )
    with pytest.raises(InvalidArgument, match="ambiguous"):
        service.resolve("abc")
    found = service.resolve("abc1")
    assert found is not None and found.id.startswith("abc1")
    assert service.resolve("ffff") is None
