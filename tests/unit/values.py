"""Values every tier and the Cache API must hand back exactly as they were stored."""

from __future__ import annotations

from typing import Any

# Every kind of JSON value, the edges of each, and bytes.
ROUND_TRIP_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    0.1,
    1e300,
    -2.5e-300,
    "",
    "pitch",
    'with "quotes", \\ backslash, \n newline, \x00 NUL',
    "ünïcødé ✓ 🎬",
    [],
    [1, "two", None, [3.0, {"four": 4}]],
    {},
    {"title": "...", "views": 42, "tags": ["drama"], "meta": {"draft": False, "score": None}},
    {"b": 1, "a": 2},  # key order is kept
    b"",
    b"\x00",
    b"\x00\x01\xff",
    b'{"looks": "like json"}',
    b"12",
    bytes(range(256)),
]


def exact(value: Any) -> str:
    """A form that tells apart what == does not: True from 1, -0.0 from 0.0, key order."""
    return f"{type(value).__name__}:{value!r}"
