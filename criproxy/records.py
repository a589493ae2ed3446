"""Frozen dataclasses to and from JSON, for the records criproxy keeps in containerd.

A record written by a newer criproxy may carry keys this one does not know: they are
ignored, and missing keys take the field's default, so records survive upgrades both ways.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def to_json(record: Any) -> bytes:
    """The same JSON as `dataclasses.asdict` would give, without its deep copy: nested
    records are expanded as the encoder reaches them (a record is written on every state
    change of every pod and container)."""
    return _ENCODER.encode(record).encode()


_FIELDS: dict[type, tuple[str, ...]] = {}


def _expand(value: Any) -> Any:
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(value):
            if isinstance(value, Mapping):
                return dict(value)
            raise TypeError(f"{cls.__name__} is not JSON serializable")
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(value))
    return {name: getattr(value, name) for name in names}


_ENCODER = json.JSONEncoder(sort_keys=True, default=_expand)


def from_json(cls: type[T], raw: bytes) -> T:
    """Raises ValueError/TypeError/KeyError for a record that cannot be read."""
    return _build(cls, json.loads(raw))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping):
        _, value_hint = typing.get_args(hint)
        return {k: _convert(value_hint, v) for k, v in value.items()}
    if hint is int and isinstance(value, str):
        return int(value)  # protobuf's JSON form of an int64, in records of older versions
    return value
