"""The pause container's spec as the pod's security context shapes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from criproxy.config import Config
from criproxy.errors import InvalidArgument
from criproxy.images.manifest import ImageConfig
from criproxy.sandbox.model import PodConfig, PodMetadata, PodSecurity, Sandbox
from criproxy.sandbox.spec import build_spec

_IMAGE = ImageConfig(user="", diff_ids=(), raw={"config": {"Entrypoint": ["/pause"]}})


def _spec(security: PodSecurity) -> dict[str, object]:
    pod = PodConfig(metadata=PodMetadata("p", "u", "ns"), security=security)
    sandbox = Sandbox(id="s" * 64, config=pod, runtime_handler="", image="pause", created_at_ns=1)
    return build_spec(sandbox, _IMAGE, Config(restrict_oom_score_adj=False))


def test_runtime_default_seccomp_and_selinux_labels_reach_the_pause() -> None:
    spec = _spec(PodSecurity(seccomp="runtime/default", selinux_label="u:r:t:s0"))
    linux = spec["linux"]
    assert isinstance(linux, dict)
    seccomp = linux["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert any("read" in rule["names"] for rule in seccomp["syscalls"])
    assert linux["mountLabel"] == "u:r:t:s0"
    assert spec["process"]["selinuxLabel"] == "u:r:t:s0"  # type: ignore[index]


def test_unconfined_and_privileged_pods_have_no_profile() -> None:
    assert "seccomp" not in _spec(PodSecurity(seccomp="unconfined"))["linux"]  # type: ignore[operator]
    privileged = _spec(PodSecurity(seccomp="runtime/default", privileged=True))
    assert "seccomp" not in privileged["linux"]  # type: ignore[operator]


def test_localhost_profiles_are_read_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}))
    spec = _spec(PodSecurity(seccomp=f"localhost/{profile}"))
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"  # type: ignore[index]
    with pytest.raises(InvalidArgument, match="cannot be read"):
        _spec(PodSecurity(seccomp=f"localhost/{tmp_path}/missing.json"))
