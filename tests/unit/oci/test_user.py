"""uid/gid resolution as containerd's WithUser does it, from the image's passwd and group."""

from __future__ import annotations

import pytest

from criproxy.oci import UserError, needs_lookup, resolve_user, user_string
from criproxy.oci.user import member_gids, parse_group, parse_passwd

PASSWD = """\
root:x:0:0:root:/root:/bin/sh

www:x:1000:1001::/home/www:/bin/sh
dup:x:1000:7::/:/bin/sh
odd:x:notanumber
"""
GROUP = """\
# comment
root:x:0:
staff:x:50:www
"""


@pytest.mark.parametrize(
    ("uid", "gid", "name", "expected"),
    [
        (None, None, "", ""),
        (1000, None, "", "1000"),
        (1000, 3000, "", "1000:3000"),
        (0, 0, "", "0:0"),
        (None, None, "www", "www"),
        (1000, 5, "www", "www:5"),
    ],
)
def test_user_string(uid: int | None, gid: int | None, name: str, expected: str) -> None:
    assert user_string(uid, gid, name) == expected


def test_group_without_user_is_an_error() -> None:
    with pytest.raises(UserError, match="without user"):
        user_string(None, 5)


@pytest.mark.parametrize(
    ("userstr", "expected"),
    [
        ("1000", (1000, 1001)),  # primary gid from passwd, first match wins
        ("42", (42, 0)),  # not listed
        ("www", (1000, 1001)),
        ("www:50", (1000, 50)),
        ("www:staff", (1000, 50)),
        ("1000:staff", (1000, 50)),
        ("5:6", (5, 6)),
        ("5:", (5, 0)),
        (":6", (0, 6)),
        ("www:", (1000, 0)),
        ("odd", (0, 0)),  # garbage number fields read as 0
        ("+7:+8", (7, 8)),
    ],
)
def test_resolve_user(userstr: str, expected: tuple[int, int]) -> None:
    assert resolve_user(userstr, PASSWD, GROUP) == expected


def test_lone_uid_without_passwd_has_gid_zero() -> None:
    assert resolve_user("1000", None, None) == (1000, 0)


@pytest.mark.parametrize(
    ("userstr", "passwd", "group", "message"),
    [
        ("nobody", PASSWD, GROUP, "no users found"),
        ("www", None, GROUP, "no /etc/passwd"),
        ("1:wheel", PASSWD, GROUP, "no groups found"),
        ("1:staff", PASSWD, None, "no /etc/group"),
        ("1:2:3", PASSWD, GROUP, "invalid USER value"),
        ("-1", PASSWD, GROUP, "uid out of range"),
        ("2147483648", PASSWD, GROUP, "uid out of range"),
        ("1:2147483648", PASSWD, GROUP, "gid out of range"),
        ("99999999999999999999", PASSWD, GROUP, "uid out of range"),
    ],
)
def test_unresolvable_users(
    userstr: str, passwd: str | None, group: str | None, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        resolve_user(userstr, passwd, group)


@pytest.mark.parametrize(
    ("userstr", "expected"),
    [("", False), ("1000", True), ("www", True), ("1:2", False), ("1:", False), ("a:1", True)],
)
def test_needs_lookup(userstr: str, expected: bool) -> None:
    assert needs_lookup(userstr) is expected


def test_parsers_skip_blank_lines_and_group_comments() -> None:
    assert [e.name for e in parse_passwd(PASSWD)] == ["root", "www", "dup", "odd"]
    assert [(e.name, e.gid) for e in parse_group(GROUP)] == [("root", 0), ("staff", 50)]


MEMBER_GROUP = """\
www:x:1000:www
staff:x:50:www,other
wheel:x:10:root,www
empty:x:7:
"""


@pytest.mark.parametrize(
    ("user", "passwd", "group", "expected"),
    [
        ("www", PASSWD, MEMBER_GROUP, [50, 10]),  # file order; the own-name group is skipped
        ("1000", PASSWD, MEMBER_GROUP, [50, 10]),  # a uid is named through passwd
        ("0", PASSWD, MEMBER_GROUP, [10]),
        ("42", PASSWD, MEMBER_GROUP, []),  # a uid passwd does not list has no groups
        ("1000", None, MEMBER_GROUP, []),
        ("www", PASSWD, None, []),
        ("other", None, MEMBER_GROUP, [50]),  # a name needs no passwd
        ("nobody", PASSWD, MEMBER_GROUP, []),
    ],
)
def test_member_gids(user: str, passwd: str | None, group: str | None, expected: list[int]) -> None:
    assert member_gids(user, passwd, group) == expected


def test_group_members_are_parsed() -> None:
    assert [(e.name, e.members) for e in parse_group(MEMBER_GROUP)] == [
        ("www", ("www",)),
        ("staff", ("www", "other")),
        ("wheel", ("root", "www")),
        ("empty", ()),
    ]
