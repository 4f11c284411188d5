"""How values are stored: JSON as plain JSON, bytes tagged, nothing executable.

JSON values are stored as their orjson encoding, so an integer is the
decimal text Redis's INCR works on and other tools can read the values.
Bytes are stored behind a NUL tag byte; JSON text never starts with NUL, so
the two can't be confused. Decoding never executes anything: a value that is
neither (a pickle, random bytes, broken JSON) is :class:`Undecodable`, which
the cache counts and treats as a miss.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from pitchey_cache.errors import UnsupportedValueError

BYTES_TAG: Final = b"\x00"


class Undecodable(Exception):  # noqa: N818 - a signal between two functions, not an error
    """The stored bytes are not a value this library wrote."""


def encode(value: Any) -> bytes:
    """Encode a JSON value or bytes. Dict keys must be strings."""
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTES_TAG + bytes(value)
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise UnsupportedValueError(
            f"cannot cache a value of type {type(value).__name__}: "
            f"expected a JSON value (dict, list, str, int, float, bool, None) or bytes ({exc})"
        ) from None


def decode(data: bytes) -> Any:
    """Decode what :func:`encode` produced; raise :class:`Undecodable` otherwise."""
    if data[:1] == BYTES_TAG:
        return data[1:]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Undecodable from None
