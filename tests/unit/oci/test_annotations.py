"""Pod annotations pass through by Go path.Match globs, as containerd's pod_annotations."""

from __future__ import annotations

import pytest

from criproxy.oci import passthrough_annotations


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("io.katacontainers.*", "io.katacontainers.config.x", True),
        ("*", "a/b", False),  # * stops at /
        ("example.com/*", "example.com/x", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "dx", True),
        ("[^a-c]x", "bx", False),
        ("[^a]x", "/x", True),  # a negated class may match /
        ("[z-a]", "m", False),  # an empty range matches nothing
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("exact", "exact", True),
        ("exact", "exactly", False),
        ("[", "[", False),  # malformed patterns match nothing
        ("[]a]", "]", False),
        ("a\\", "a", False),
        ("[a-]", "a", False),
        ("[\\]]", "]", True),
    ],
)
def test_go_path_match(pattern: str, key: str, matches: bool) -> None:
    result = passthrough_annotations({key: "v"}, [pattern])
    assert (key in result) is matches


def test_any_pattern_is_enough_and_no_patterns_pass_nothing() -> None:
    pod = {"a.x": "1", "b.y": "2", "c.z": "3"}
    assert passthrough_annotations(pod, ["a.*", "b.*"]) == {"a.x": "1", "b.y": "2"}
    assert passthrough_annotations(pod, []) == {}


def test_the_criu_config_annotation_never_passes() -> None:
    """runc hands `org.criu.config` to CRIU, whose config can run host commands as root."""
    from criproxy.oci.annotations import passthrough_annotations

    given = {"org.criu.config": "/tmp/evil.conf", "app": "web"}
    assert passthrough_annotations(given, ["*", "org.criu.config"]) == {"app": "web"}
