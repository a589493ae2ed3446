"""CRI's Image message from criproxy's image records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy._generated.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from criproxy.images.store import Image


def _user(config_user: str) -> tuple[int | None, str]:
    """The image's USER as the kubelet wants it: a numeric uid, or else a user name."""
    if not config_user:
        return None, ""
    user = config_user.split(":", 1)[0]
    try:
        return int(user), ""
    except ValueError:
        return None, user


def to_cri_image(image: Image) -> api_pb2.Image:
    uid, username = _user(image.content.config.user)
    message = api_pb2.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.content.size,
        username=username,
        pinned=image.pinned,
    )
    if uid is not None:
        message.uid.value = uid
    return message
