"""Records by id, found by full id or unique id prefix (as containerd's CRI resolves ids)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from criproxy.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from collections.abc import Iterator

    from criproxy.store.gate import RecoveredGate


class _Record(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Record)


class Index(Generic[R]):
    def __init__(self, what: str) -> None:
        self.what = what
        """What a record is, for messages: "pod sandbox", "container"."""
        self._records: dict[str, R] = {}

    def get(self, record_id: str) -> R | None:
        """By full id only (the call modules' own lookups)."""
        return self._records.get(record_id)

    def resolve(self, wanted: str) -> R | None:
        """By full id or unique prefix; an ambiguous prefix is INVALID_ARGUMENT."""
        found = self._records.get(wanted)
        if found is not None:
            return found
        matches = [r for i, r in self._records.items() if i.startswith(wanted)]
        if len(matches) > 1:
            raise InvalidArgument(f"{self.what} id prefix {wanted!r} is ambiguous")
        return matches[0] if matches else None

    def require(self, wanted: str) -> R:
        """`resolve`, or NOT_FOUND naming the id that was asked for."""
        found = self.resolve(wanted)
        if found is None:
            raise NotFound(f"{self.what} {wanted!r} not found")
        return found

    def put(self, record: R) -> None:
        self._records[record.id] = record

    def pop(self, record_id: str) -> R | None:
        return self._records.pop(record_id, None)

    def values(self) -> list[R]:
        return list(self._records.values())

    def ids(self) -> set[str]:
        return set(self._records)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._records

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)


class GatedIndex(Generic[R]):
    """The lookups a CRI call makes: the id field is required, and nothing is answered
    from memory before the first recovery (the gate)."""

    def __init__(self, gate: RecoveredGate, what: str, field: str) -> None:
        self.gate = gate
        self.index: Index[R] = Index(what)
        self._field = field

    def resolve(self, wanted: str) -> R | None:
        """By full id or unique id prefix; None when there is none."""
        self._check(wanted)
        return self.index.resolve(wanted)

    def get(self, wanted: str) -> R:
        """By full id or unique id prefix; NOT_FOUND when there is none."""
        self._check(wanted)
        return self.index.require(wanted)

    def _check(self, wanted: str) -> None:
        if not wanted:
            raise InvalidArgument(f"{self._field} is required")
        self.gate.require()
