"""List responses assembled from each record's message encoded once.

Records are immutable (a change is a new record object), so a record's CRI message is
encoded when the record is first listed and reused until the record is replaced. A list
response is then those bytes joined under the repeated field's tag: the kubelet's relist
of a hundred containers once a second costs no message building or serialising (grpc
sends what the handler returns when it is bytes already, see `cri/handlers.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

    from google.protobuf.message import Message

R = TypeVar("R")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EncodedList(Generic[R]):
    """A response message with one repeated message field, built from cached encodings of
    each record's message (`to_message`), keyed by the record's id. A singular message
    field encodes the same way: a status response is the list of its one record."""

    def __init__(
        self,
        response: type[Message],
        field: str,
        to_message: Callable[[R], Message],
        key: Callable[[R], str],
    ) -> None:
        number = response.DESCRIPTOR.fields_by_name[field].number
        self._tag = _varint(number << 3 | 2)  # wire type 2: length-delimited
        self._to_message = to_message
        self._key = key
        self._cache: dict[str, tuple[R, bytes]] = {}

    def encode(self, records: Iterable[R], *, complete: bool = False) -> bytes:
        """The encoded response listing `records`, in order. `complete`: they are every
        record there is (an unfiltered list), so the cache forgets any other."""
        parts: list[bytes] = []
        seen: set[str] = set()
        for record in records:
            key = self._key(record)
            seen.add(key)
            hit = self._cache.get(key)
            if hit is None or hit[0] is not record:
                hit = self._cache[key] = (record, self._to_message(record).SerializeToString())
            data = hit[1]
            parts += (self._tag, _varint(len(data)), data)
        if complete:
            self.retain(seen)
        return b"".join(parts)

    def retain(self, keys: Collection[str]) -> None:
        """Forget the encodings of every record but these (the removed ones)."""
        if len(self._cache) > len(keys):
            for gone in [k for k in self._cache if k not in keys]:
                del self._cache[gone]
