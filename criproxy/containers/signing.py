"""The signature that makes a checkpoint archive restorable: an HMAC-SHA256, with a key
only this node (and the nodes it shares the key with) holds, over the SHA-256 of every
file in the archive. An archive nobody holding the key made, or one changed after it
was made, is refused before any of it is used."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from typing import TYPE_CHECKING, Any

from criproxy.errors import FailedPrecondition

if TYPE_CHECKING:
    from pathlib import Path

SIGNATURE = "criproxy.sig"
"""The archive member holding the manifest and its HMAC (the last member written)."""
KEY_BYTES = 32


def key(path: Path) -> bytes:
    """The node's checkpoint key, made (0600, 32 random bytes) on first use; a key file
    appears whole (written aside, then linked), so a concurrent reader never sees half of
    one. Blocking."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # the first maker's key stands
        aside.unlink()
    data = path.read_bytes()
    if len(data) < KEY_BYTES:
        raise FailedPrecondition(
            f"checkpoint key {path} holds {len(data)} bytes, fewer than {KEY_BYTES}: "
            "replace it with 32 random bytes (nodes that share checkpoints share it)"
        )
    return data


def _canonical(files: dict[str, str]) -> bytes:
    return json.dumps({"version": 1, "files": files}, sort_keys=True).encode()


def sign(files: dict[str, str], secret: bytes) -> bytes:
    """The signature member's content for these `{member name: sha256 hex}`."""
    mac = hmac.new(secret, _canonical(files), hashlib.sha256).hexdigest()
    return json.dumps({"version": 1, "files": files, "hmac": mac}, indent=2).encode()


def verify(signature: bytes, secret: bytes) -> dict[str, str]:
    """The signed manifest, or ValueError saying why it is not one this key made."""
    try:
        doc: Any = json.loads(signature)
        files, mac = doc["files"], doc["hmac"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("its signature is not readable") from None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ValueError("its signature is not readable")
    expected = hmac.new(secret, _canonical(files), hashlib.sha256).hexdigest()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
        raise ValueError("its signature does not match this node's checkpoint key")
    return files
