"""The name registrar: a CRI name (pod or container) belongs to one id at a time."""

from __future__ import annotations

from criproxy.errors import AlreadyExists


class NameRegistrar:
    def __init__(self, what: str) -> None:
        self._what = what
        self._ids: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self._ids.get(name)

    def reserve(self, name: str, record_id: str) -> None:
        """Taken synchronously, before any await: one record per name, also under races."""
        existing = self._ids.get(name)
        if existing is not None and existing != record_id:
            raise AlreadyExists(
                f"{self._what} name {name!r} is already reserved for {self._what} {existing}"
            )
        self._ids[name] = record_id
        self._names[record_id] = name

    def release(self, record_id: str) -> None:
        name = self._names.pop(record_id, None)
        if name is not None and self._ids.get(name) == record_id:
            del self._ids[name]
