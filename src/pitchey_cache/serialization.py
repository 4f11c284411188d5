"""How values are stored: JSON as plain JSON, bytes tagged, nothing executable.

JSON values are stored as their orjson encoding, so an integer is the
decimal text Redis's INCR works on and other tools can read the values.
Bytes are stored behind a NUL tag byte; JSON text never starts with NUL, so
the two can't be confused. Decoding never executes anything: a value that is
neither (a pickle, random bytes, broken JSON) is :class:`Undecodable`, which
the cache counts and treats as a miss.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from pitchey_cache.errors import UnsupportedValueError

BYTES_TAG: Final = b"\x00"
# orjson's own nesting limit; it also stops a list that contains itself.
_MAX_DEPTH: Final = 254
_EXPECTED: Final = (
    "expected a JSON value (dict with str keys, list, str, int within 64 bits, "
    "finite float, bool, None) or bytes as the whole value"
)


class Undecodable(Exception):  # noqa: N818 - a signal between two functions, not an error
    """The stored bytes are not a value this library wrote."""


def encode(value: Any) -> bytes:
    """Encode a JSON value or bytes, refusing anything that would not read back the same."""
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTES_TAG + bytes(value)
    kind = type(value)
    if kind is not str and kind is not int and kind is not bool and value is not None:
        _check_round_trip(value)
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # integers beyond 64 bits
        raise UnsupportedValueError(f"cannot cache this value ({exc}): {_EXPECTED}") from None


def _check_round_trip(value: Any) -> None:
    """Only exact JSON types: orjson would quietly turn a datetime, UUID or dataclass
    into a str or dict, a tuple into a list, and NaN or infinity into null."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > _MAX_DEPTH:
            raise UnsupportedValueError(
                f"cannot cache a value nested over {_MAX_DEPTH} deep: {_EXPECTED}"
            )
        kind = type(item)
        if item is None or kind is str or kind is int or kind is bool:
            continue
        if kind is float:
            if not math.isfinite(item):
                raise UnsupportedValueError(f"cannot cache {item!r}: {_EXPECTED}")
            continue
        if kind is list:
            pending.extend((member, depth + 1) for member in item)
            continue
        if kind is dict:
            for key, member in item.items():
                if type(key) is not str:
                    raise UnsupportedValueError(
                        f"cannot cache a dict with a {type(key).__name__} key: {_EXPECTED}"
                    )
                pending.append((member, depth + 1))
            continue
        if isinstance(item, bytes | bytearray | memoryview):
            # Only the whole value may be bytes: inside JSON they have no encoding.
            raise UnsupportedValueError(
                f"cannot cache {kind.__name__} inside a dict or list: bytes are allowed only "
                "as the whole value; store them under a key of their own, or put them in "
                "the JSON as text (base64, for example)"
            )
        raise UnsupportedValueError(f"cannot cache a value of type {kind.__name__}: {_EXPECTED}")


def decode(data: bytes) -> Any:
    """Decode what :func:`encode` produced; raise :class:`Undecodable` otherwise."""
    if data[:1] == BYTES_TAG:
        return data[1:]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Undecodable from None
