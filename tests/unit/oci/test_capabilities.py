"""Capability names, masks, and containerd's add/drop rules bounded by what criproxy holds."""

from __future__ import annotations

import pytest

from criproxy.oci import default_capabilities
from criproxy.oci.capabilities import (
    KNOWN,
    from_mask,
    normalize,
    resolve,
)

HOST_MASK = 0x1FFFEFFFFFF
"""A real host's CapBnd: every capability up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE."""
HOST = from_mask(HOST_MASK)


def test_kernel_numbering() -> None:
    assert len(KNOWN) == 41
    assert KNOWN.index("CAP_CHOWN") == 0
    assert KNOWN.index("CAP_SYS_ADMIN") == 21
    assert KNOWN.index("CAP_SYS_RESOURCE") == 24
    assert KNOWN.index("CAP_AUDIT_READ") == 37
    assert KNOWN.index("CAP_BPF") == 39
    assert KNOWN.index("CAP_CHECKPOINT_RESTORE") == 40


def test_mask_to_names_in_kernel_order() -> None:
    assert len(HOST) == 40
    assert "CAP_SYS_RESOURCE" not in HOST
    assert HOST[:3] == ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")
    assert from_mask(0) == ()
    assert from_mask(1 << 21 | 1) == ("CAP_CHOWN", "CAP_SYS_ADMIN")
    # bits the kernel may grow beyond the known list are not names anyone can use
    assert from_mask(1 << 45 | 1 << 5) == ("CAP_KILL",)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sys_admin", "CAP_SYS_ADMIN"),
        ("SYS_ADMIN", "CAP_SYS_ADMIN"),
        ("CAP_SYS_ADMIN", "CAP_SYS_ADMIN"),
        ("cap_net_raw", "CAP_NET_RAW"),
        ("all", "ALL"),
    ],
)
def test_normalize(name: str, expected: str) -> None:
    assert normalize(name) == expected


def test_no_changes_keep_the_defaults() -> None:
    assert resolve(default_capabilities(), [], [], HOST) == default_capabilities()


def test_adds_are_appended_and_drops_removed() -> None:
    caps = resolve(default_capabilities(), ["NET_ADMIN", "SYS_TIME"], ["CHOWN", "KILL"], HOST)
    assert caps[-2:] == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert "CAP_CHOWN" not in caps
    assert "CAP_KILL" not in caps
    assert len(caps) == len(default_capabilities())


def test_add_all_is_what_criproxy_holds_and_named_drops_still_apply() -> None:
    caps = resolve(default_capabilities(), ["ALL"], ["CHOWN"], HOST)
    assert caps == [c for c in HOST if c != "CAP_CHOWN"]


def test_drop_all_then_named_adds() -> None:
    assert resolve(default_capabilities(), ["NET_BIND_SERVICE"], ["ALL"], HOST) == [
        "CAP_NET_BIND_SERVICE"
    ]
    assert resolve(default_capabilities(), [], ["ALL"], HOST) == []


def test_capabilities_criproxy_lacks_are_left_out() -> None:
    caps = resolve(default_capabilities(), ["SYS_RESOURCE", "NET_ADMIN"], [], HOST)
    assert "CAP_SYS_RESOURCE" not in caps
    assert "CAP_NET_ADMIN" in caps
    # a default capability missing from the bounding set goes too
    reduced = [c for c in HOST if c != "CAP_MKNOD"]
    assert "CAP_MKNOD" not in resolve(default_capabilities(), [], [], reduced)


def test_privileged_is_everything_held_whatever_was_asked() -> None:
    caps = resolve(default_capabilities(), [], ["ALL"], HOST, privileged=True)
    assert caps == list(HOST)
    assert "CAP_SYS_RESOURCE" not in caps
