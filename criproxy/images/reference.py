"""Image references, normalised the way the kubelet and containerd do.

`busybox` is `docker.io/library/busybox:latest`; a reference with both a tag and a digest
is resolved by its digest alone (containerd's ParseDockerRef drops the tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from criproxy.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_PATH = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_ANCHORED_ID = re.compile(r"^[a-f0-9]{64}$")
_SHA256_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference: domain, path, and a tag or a digest (or both)."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """`docker.io/library/busybox`: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        """The repo-digest form (`name@sha256:...`) of the same repository."""
        return Reference(self.domain, self.path, digest=digest)

    @property
    def object(self) -> str:
        """What the registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag


def is_image_id(text: str) -> bool:
    """A config digest (`sha256:<64 hex>`) or its bare 64-hex form: an image id, not a ref."""
    return bool(_SHA256_DIGEST.match(text) or _ANCHORED_ID.match(text))


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(text: str) -> Reference:
    """Parse and normalise a reference as given; no default tag (see `parse_docker_ref`)."""
    if not text:
        raise InvalidArgument("image reference is empty")
    if is_image_id(text) and "/" not in text:
        raise InvalidArgument(
            f"invalid image reference {text!r}: an image id cannot be pulled by itself"
        )
    match = _REFERENCE.match(text)
    if match is None:
        lowered = text.lower()
        if lowered != text and _REFERENCE.match(_lower_path(text)):
            raise InvalidArgument(
                f"invalid image reference {text!r}: repository name must be lowercase"
            )
        raise InvalidArgument(f"invalid image reference {text!r}")
    name = match.group("name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(
            f"invalid image reference {text!r}: repository name longer than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    domain, path = _split_domain(name)
    if not _PATH.match(path):
        reason = "repository name must be lowercase" if _PATH.match(path.lower()) else "bad name"
        raise InvalidArgument(f"invalid image reference {text!r}: {reason}")
    digest = match.group("digest") or ""
    if digest:
        _check_digest(text, digest)
    return Reference(domain, path, match.group("tag") or "", digest)


def _lower_path(text: str) -> str:
    """The reference with its repository lowercased, to tell 'uppercase' from 'malformed'."""
    name, sep, rest = text.partition("@")
    head, colon, tag = name.rpartition(":")
    if colon and "/" not in tag:
        return head.lower() + ":" + tag + sep + rest
    return name.lower() + sep + rest


def _check_digest(text: str, digest: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    if algorithm == "sha256" and not re.fullmatch(r"[a-f0-9]{64}", encoded):
        raise InvalidArgument(f"invalid image reference {text!r}: invalid sha256 digest")
    if algorithm == "sha512" and not re.fullmatch(r"[a-f0-9]{128}", encoded):
        raise InvalidArgument(f"invalid image reference {text!r}: invalid sha512 digest")
    if algorithm not in ("sha256", "sha512"):
        raise InvalidArgument(
            f"invalid image reference {text!r}: unsupported digest algorithm {algorithm!r}"
        )


def parse_docker_ref(text: str) -> Reference:
    """What a pull resolves: digest wins over a tag; no tag and no digest means `latest`."""
    ref = parse(text)
    if ref.digest:
        return Reference(ref.domain, ref.path, digest=ref.digest)
    if not ref.tag:
        return Reference(ref.domain, ref.path, tag=DEFAULT_TAG)
    return ref
