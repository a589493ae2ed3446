"""The in-memory image index: containerd's image records grouped by image id.

List and Status answer from here without a round trip. Each containerd record name is
one reference (a tag, a repo digest, or the `sha256:` id itself); records whose target
leads to the same config digest are one image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from criproxy.errors import CriproxyError
from criproxy.images import reference

if TYPE_CHECKING:
    from collections.abc import Iterable

    from criproxy.containerd.types import Descriptor
    from criproxy.images.manifest import ImageConfig

_HEX_PREFIX = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


@dataclass(frozen=True)
class ImageContent:
    """What an image is, independent of its names."""

    id: str
    """The config digest."""
    target: Descriptor
    """The manifest (or index) the records point at."""
    manifest_digest: str
    config: ImageConfig
    size: int
    chain_id: str
    layers: tuple[Descriptor, ...] = ()
    checkpoint_name: str = ""
    """Set when the image is a container checkpoint (see `manifest.checkpoint_name`)."""


@dataclass(frozen=True)
class Image:
    content: ImageContent
    references: tuple[str, ...]
    pinned: bool

    @property
    def id(self) -> str:
        return self.content.id

    @property
    def repo_tags(self) -> list[str]:
        return sorted(r for r in self.references if "@" not in r and not r.startswith("sha256:"))

    @property
    def repo_digests(self) -> list[str]:
        return sorted(r for r in self.references if "@" in r)


@dataclass
class ImageStore:
    pinned_refs: frozenset[str] = frozenset()
    _contents: dict[str, ImageContent] = field(default_factory=dict)
    _refs: dict[str, str] = field(default_factory=dict)
    """record name -> image id"""
    _pinned_ids: set[str] = field(default_factory=set)
    _removals: dict[str, int] = field(default_factory=dict)
    """record name -> how often a reference of that name was removed (see `removals`)."""

    def replace_all(self, entries: Iterable[tuple[str, ImageContent, bool]]) -> None:
        """Rebuild from (record name, content, pinned label) triples, as recovery reads them."""
        self._contents.clear()
        self._refs.clear()
        self._pinned_ids.clear()
        for name, content, pinned in entries:
            self.add(name, content, pinned=pinned)

    def add(self, name: str, content: ImageContent, *, pinned: bool = False) -> None:
        previous = self._refs.get(name)
        self._contents[content.id] = content
        self._refs[name] = content.id
        if pinned:
            self._pinned_ids.add(content.id)
        if previous and previous != content.id:
            self._drop_if_unnamed(previous)

    def removals(self, name: str) -> int:
        """A counter that moves whenever `name` is removed: work that read a record and
        awaited meanwhile compares it before adding, so a removal in between stands."""
        return self._removals.get(name, 0)

    def remove_reference(self, name: str) -> None:
        self._removals[name] = self._removals.get(name, 0) + 1
        image_id = self._refs.pop(name, None)
        if image_id:
            self._drop_if_unnamed(image_id)

    def _drop_if_unnamed(self, image_id: str) -> None:
        if image_id not in self._refs.values():
            self._contents.pop(image_id, None)
            self._pinned_ids.discard(image_id)

    def _image(self, image_id: str) -> Image:
        refs = tuple(sorted(name for name, i in self._refs.items() if i == image_id))
        pinned = image_id in self._pinned_ids or any(r in self.pinned_refs for r in refs)
        return Image(self._contents[image_id], refs, pinned)

    def get(self, image_id: str) -> Image | None:
        return self._image(image_id) if image_id in self._contents else None

    def list(self) -> list[Image]:
        return [self._image(image_id) for image_id in sorted(self._contents)]

    def resolve(self, ref_or_id: str) -> Image | None:
        """By reference (normalised, `latest` by default), then by full or unique short id."""
        try:
            ref = reference.parse_docker_ref(ref_or_id)
        except CriproxyError:
            ref = None
        if ref is not None:
            image_id = self._refs.get(str(ref))
            if image_id is not None:
                return self._image(image_id)
        match = _HEX_PREFIX.match(ref_or_id)
        if match is None:
            return None
        prefix = "sha256:" + match.group(1)
        candidates = [i for i in self._contents if i.startswith(prefix)]
        return self._image(candidates[0]) if len(candidates) == 1 else None
