"""A process's uid and gid from a CRI user, an image `USER`, and the image's own files.

containerd reads `/etc/passwd` and `/etc/group` inside the container's rootfs to turn
names into ids (and a lone uid into its primary gid). Here the caller reads those files
and hands over their text; everything else is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from criproxy.errors import InvalidArgument

MAX_ID = 2**31 - 1
"""runc refuses ids above MaxInt32, so containerd does too."""

_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1
_UINT32 = 0xFFFFFFFF


class UserError(InvalidArgument):
    """A user or group that cannot be turned into ids."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


def user_string(run_as_user: int | None, run_as_group: int | None, username: str = "") -> str:
    """`uid`, `uid:gid`, `name` or `name:gid` from CRI's fields; "" when none is set.

    A group without a user is an error (the image's user does not make up for it).
    """
    user = username or ("" if run_as_user is None else str(run_as_user))
    group = "" if run_as_group is None else str(run_as_group)
    if not user:
        if group:
            raise UserError(f"user group {group!r} is specified without user")
        return ""
    return f"{user}:{group}" if group else user


def _go_atoi(text: str) -> int | None:
    """strconv.Atoi: None when not a number; out-of-range numbers raise."""
    if not _INT.fullmatch(text):
        return None
    value = int(text)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValueError(text)
    return value


def _parse_id(text: str, what: str, userstr: str) -> int | None:
    """A numeric uid/gid in [0, MAX_ID], or None when `text` is a name."""
    try:
        value = _go_atoi(text)
    except ValueError:
        raise UserError(f"invalid USER value {userstr!r}: {what} out of range") from None
    if value is not None and not 0 <= value <= MAX_ID:
        raise UserError(f"invalid USER value {userstr!r}: {what} out of range")
    return value


def _field_int(text: str) -> int:
    """A number field of passwd/group: garbage reads as 0, as in libcontainer."""
    try:
        value = _go_atoi(text)
    except ValueError:
        return _INT64_MAX if not text.startswith("-") else -_INT64_MAX - 1
    return 0 if value is None else value


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of an /etc/passwd, leniently (short or malformed lines still yield entries)."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = line.split(":")
        parts += [""] * (4 - len(parts))
        entries.append(PasswdEntry(parts[0], _field_int(parts[2]), _field_int(parts[3])))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of an /etc/group; blank lines and `#` comments are skipped."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        parts += [""] * (4 - len(parts))
        members = tuple(parts[3].split(",")) if parts[3] else ()
        entries.append(GroupEntry(parts[0], _field_int(parts[2]), members))
    return entries


def needs_lookup(userstr: str) -> bool:
    """Whether resolving `userstr` reads the image's /etc/passwd or /etc/group."""
    if not userstr:
        return False
    parts = userstr.split(":")
    if len(parts) == 1:
        return True  # a name, or a lone uid whose primary gid comes from passwd
    if len(parts) == 2:
        return any(p and not _INT.fullmatch(p) for p in parts)
    return False


def _user_by_name(name: str, etc_passwd: str | None) -> PasswdEntry:
    if etc_passwd is None:
        raise UserError(f"cannot find user {name!r}: the image has no /etc/passwd")
    for entry in parse_passwd(etc_passwd):
        if entry.name == name:
            return entry
    raise UserError(f"cannot find user {name!r}: no users found")


def _gid_by_name(name: str, etc_group: str | None) -> int:
    if etc_group is None:
        raise UserError(f"cannot find group {name!r}: the image has no /etc/group")
    for entry in parse_group(etc_group):
        if entry.name == name:
            return entry.gid & _UINT32
    raise UserError(f"cannot find group {name!r}: no groups found")


def resolve_user(
    userstr: str, etc_passwd: str | None = None, etc_group: str | None = None
) -> tuple[int, int]:
    """(uid, gid) for `userstr` (`uid`, `name`, `uid:gid`, `name:group`, ...).

    `etc_passwd`/`etc_group` are the texts of the image's files, None when absent. A lone
    uid takes its primary gid from passwd (0 when it is not listed); a name must be listed.
    In `user:group` an empty side means 0.
    """
    parts = userstr.split(":")
    if len(parts) == 1:
        uid = _parse_id(parts[0], "uid", userstr)
        if uid is None:
            entry = _user_by_name(userstr, etc_passwd)
            return entry.uid & _UINT32, entry.gid & _UINT32
        for entry in parse_passwd(etc_passwd or ""):
            if entry.uid == uid:
                return entry.uid & _UINT32, entry.gid & _UINT32
        return uid, 0
    if len(parts) == 2:
        user_part, group_part = parts
        uid = _parse_id(user_part, "uid", userstr)
        gid = _parse_id(group_part, "gid", userstr)
        if uid is None and user_part:
            uid = _user_by_name(user_part, etc_passwd).uid & _UINT32
        if gid is None and group_part:
            gid = _gid_by_name(group_part, etc_group)
        return uid or 0, gid or 0
    raise UserError(f"invalid USER value {userstr!r}")


def member_gids(user: str, etc_passwd: str | None, etc_group: str | None) -> list[int]:
    """The gids of the /etc/group entries listing `user` as a member (containerd's
    WithAdditionalGIDs), in file order; the primary gid is not included.

    `user` is a name or a uid; a uid is named through passwd, and a uid passwd does not
    list (or a missing file) has no groups. A group named like the user is its own
    primary group, not a supplementary one, and is skipped.
    """
    name = user
    try:
        uid = _go_atoi(user)
    except ValueError:
        uid = None
    if uid is not None:
        found = [e for e in parse_passwd(etc_passwd or "") if e.uid == uid]
        if not found:
            return []
        name = found[0].name
    if etc_group is None:
        return []
    return [
        entry.gid & _UINT32
        for entry in parse_group(etc_group)
        if entry.name != name and name in entry.members
    ]
