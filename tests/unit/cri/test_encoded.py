"""List responses from cached encodings: the same bytes a message would give, a replaced
record encoded anew, removed records forgotten."""

from __future__ import annotations

from dataclasses import dataclass

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.cri.convert.encoded import EncodedList


@dataclass(frozen=True)
class _Record:
    id: str
    name: str


def _message(record: _Record) -> api_pb2.Container:
    return api_pb2.Container(
        id=record.id, metadata=api_pb2.ContainerMetadata(name=record.name * 50)
    )


def test_the_bytes_are_the_messages_and_a_replaced_record_is_encoded_anew() -> None:
    encoded_list = EncodedList(api_pb2.ListContainersResponse, "containers", _message, _id)
    records = [_Record(f"c{i}", f"n{i}") for i in range(300)]  # lengths past one varint byte
    expected = api_pb2.ListContainersResponse(containers=[_message(r) for r in records])
    assert encoded_list.encode(records) == expected.SerializeToString()

    records[7] = _Record("c7", "renamed")
    parsed = api_pb2.ListContainersResponse.FromString(encoded_list.encode(records))
    assert parsed.containers[7].metadata.name == "renamed" * 50
    assert [c.id for c in parsed.containers] == [r.id for r in records]
    assert encoded_list.encode([]) == b""


def test_an_unfiltered_list_forgets_the_records_that_are_gone() -> None:
    calls: list[str] = []

    def counted(record: _Record) -> api_pb2.Container:
        calls.append(record.id)
        return _message(record)

    encoded_list = EncodedList(api_pb2.ListPodSandboxResponse, "items", counted, _id)
    a, b = _Record("a", "x"), _Record("b", "y")
    encoded_list.encode([a, b], complete=True)
    encoded_list.encode([a], complete=False)  # a filtered list forgets nothing
    encoded_list.encode([a, b], complete=True)
    assert calls == ["a", "b"]  # each encoded once
    encoded_list.encode([a], complete=True)  # b was removed
    encoded_list.encode([a, b], complete=True)  # b is back (a new record, same id)
    assert calls == ["a", "b", "b"]


def _id(record: _Record) -> str:
    return record.id
