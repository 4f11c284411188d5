"""How values are stored: JSON as JSON, bytes tagged, nothing ever executed on decode."""

from __future__ import annotations

import dataclasses
import math
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from pitchey_cache import UnsupportedValueError
from pitchey_cache.serialization import Undecodable, decode, encode
from tests.unit.values import ROUND_TRIP_VALUES, exact


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
def test_every_json_value_and_bytes_round_trip_exactly(value: Any) -> None:
    assert exact(decode(encode(value))) == exact(value)


def test_json_values_are_stored_as_plain_json() -> None:
    # An integer is the decimal text Redis's INCR works on, and other tools can read values.
    assert encode(42) == b"42"
    assert encode("a") == b'"a"'
    assert encode({"a": [1, None]}) == b'{"a":[1,null]}'
    assert decode(b"42") == 42  # what INCR leaves behind reads back as an int


def test_bytes_are_tagged_so_they_never_read_back_as_json() -> None:
    assert encode(b"42") == b"\x0042"
    assert decode(encode(b"42")) == b"42"
    assert decode(encode(bytearray(b"ba"))) == b"ba"
    assert decode(encode(memoryview(b"mv"))) == b"mv"


class _ExecutedOnUnpickle:
    ran = False


def _side_effect() -> None:
    _ExecutedOnUnpickle.ran = True


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_side_effect, ())


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"a": 1}),
        pickle.dumps("text", protocol=0),
        pickle.dumps(_Payload()),
        b"",
        b"\xff\xfe\x80not json",
        b'{"a": 1',
        b"[1, 2,",
        b"undefined",
        b"NaN",
        b"'single quotes'",
        "ünïcødé".encode("latin-1"),
    ],
    ids=repr,
)
def test_foreign_bytes_are_undecodable_and_never_executed(data: bytes) -> None:
    with pytest.raises(Undecodable):
        decode(data)
    assert _ExecutedOnUnpickle.ran is False


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), {1: "int key"}, 2**64, -(2**63) - 1, "\ud800", [1, object()]],
    ids=repr,
)
def test_values_that_are_not_json_are_refused(value: Any) -> None:
    with pytest.raises(UnsupportedValueError, match="expected a JSON value"):
        encode(value)


@pytest.mark.parametrize(
    "value",
    [{"poster": b"\x89PNG"}, [1, bytearray(b"x")], {"a": [{"b": memoryview(b"y")}]}],
    ids=repr,
)
def test_bytes_inside_json_are_refused_saying_bytes_go_only_at_the_top(value: Any) -> None:
    with pytest.raises(UnsupportedValueError) as refused:
        encode(value)
    message = str(refused.value)
    assert "allowed only as the whole value" in message
    assert "or bytes" not in message  # not the contradiction "type bytes: expected ... bytes"


@dataclasses.dataclass
class _Pitch:
    title: str


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.inf],
        datetime(2024, 10, 24, 12, 0, tzinfo=UTC),
        uuid.UUID(int=42),
        _Pitch("..."),
    ],
    ids=repr,
)
def test_a_value_that_would_not_read_back_the_same_is_refused(value: Any) -> None:
    """The contract is "round-trip exactly": a value either comes back equal, or is refused.

    orjson writes NaN and Infinity as ``null`` and datetimes, UUIDs and dataclasses
    as strings and objects, so storing them silently hands back something else
    (a NaN score reads back as None, a datetime as a str).
    """
    try:
        data = encode(value)
    except UnsupportedValueError:
        return
    assert exact(decode(data)) == exact(value)
