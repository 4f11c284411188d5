"""The envelope of a loaded entry: the value, and what early refresh and stale serving need.

Plain ``set`` values are stored as :mod:`pitchey_cache.serialization` writes
them, so other readers see plain JSON. Entries written by ``get_or_set`` (and
tagged ``set`` values) carry metadata next to the value::

    0x02  [1, computed_at, load_seconds, fresh_until, {tag: token}]  0x0A  value

The header is orjson text (which never holds a raw newline), the value after
the newline is the value's ordinary encoding. Neither JSON text nor the bytes
tag (NUL) starts with 0x02, so the three forms can't be confused. Times are
Unix seconds from the writer's wall clock: processes on several hosts compare
them, so they need synchronized clocks (NTP) to within a fraction of a TTL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from pitchey_cache.serialization import Undecodable, decode

ENTRY_TAG: Final = b"\x02"
_VERSION: Final = 1
_HEADER_FIELDS: Final = 5


@dataclass(frozen=True, slots=True)
class Entry:
    """A value with its metadata, as ``get_or_set`` reads it.

    ``fresh_until`` is the logical expiry: until then the value is served;
    the key's Redis TTL may keep it longer, for ``stale_if_error``.
    ``tags`` maps each tag to the tag's token when the value was computed.
    A plain value read back (no envelope) is an entry that never goes stale
    on its own: its Redis TTL alone ends it.
    """

    value: Any
    computed_at: float = 0.0
    load_seconds: float = 0.0
    fresh_until: float = math.inf
    tags: dict[str, str] = field(default_factory=dict)

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def refresh_ahead(self) -> float:
        """How long before ``fresh_until`` an early refresh starts.

        Twice the measured loader time, so the new value is stored before the
        old one expires even if the loader runs slower than last time, and at
        least 5% of the TTL, so a key read now and then still finds the window
        open; never more than half the TTL.
        """
        ttl = self.fresh_until - self.computed_at
        return min(ttl / 2, max(2 * self.load_seconds, ttl / 20))

    def due_for_refresh(self, now: float) -> bool:
        return now >= self.fresh_until - self.refresh_ahead()


def wrap(entry_value: bytes, entry: Entry) -> bytes:
    """The stored form of ``entry``, whose value is already encoded as ``entry_value``."""
    header = orjson.dumps(
        [_VERSION, entry.computed_at, entry.load_seconds, entry.fresh_until, entry.tags]
    )
    return ENTRY_TAG + header + b"\n" + entry_value


def unwrap(data: bytes) -> Entry:
    """The entry stored as ``data`` (an envelope); :class:`Undecodable` when it is not one."""
    header, newline, payload = data[1:].partition(b"\n")
    if not newline:
        raise Undecodable
    try:
        fields = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise Undecodable from None
    if not isinstance(fields, list) or len(fields) != _HEADER_FIELDS or fields[0] != _VERSION:
        raise Undecodable
    _, computed_at, load_seconds, fresh_until, tags = fields
    numbers = (computed_at, load_seconds, fresh_until)
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        raise Undecodable
    if not isinstance(tags, dict) or not all(isinstance(t, str) for t in tags.values()):
        raise Undecodable
    return Entry(
        value=decode(payload) if payload else _empty(),
        computed_at=float(computed_at),
        load_seconds=float(load_seconds),
        fresh_until=float(fresh_until),
        tags=tags,
    )


def _empty() -> Any:
    # encode() never produces an empty payload: an empty one was not written by us.
    raise Undecodable
