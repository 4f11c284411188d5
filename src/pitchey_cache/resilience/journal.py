"""Keys that may be stale on a tier, invalidated there before it serves again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class JournalEntry:
    """What one tier must invalidate: keys, glob patterns, or (overflowed) everything."""

    keys: set[str] = field(default_factory=set)
    patterns: set[str] = field(default_factory=set)
    overflowed: bool = False

    def __bool__(self) -> bool:
        return bool(self.keys or self.patterns or self.overflowed)

    def merge(self, other: JournalEntry) -> None:
        self.keys |= other.keys
        self.patterns |= other.patterns
        self.overflowed = self.overflowed or other.overflowed


class InvalidationJournal:
    """Per tier, the keys written elsewhere (or with an unknown outcome) since it last served.

    Bounded: once a tier's entry holds ``max_keys`` keys it is marked
    overflowed and stops growing; replaying an overflowed entry deletes the
    whole key prefix on that tier. That loses warm entries, never correctness.
    """

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._entries: dict[str, JournalEntry] = {}

    def __repr__(self) -> str:
        return f"<InvalidationJournal [{self.size} keys pending]>"

    @property
    def size(self) -> int:
        """Keys and patterns pending over all tiers (an overflowed tier counts its cap)."""
        return sum(
            self._max_keys if e.overflowed else len(e.keys) + len(e.patterns)
            for e in self._entries.values()
        )

    def entry(self, tier: str) -> JournalEntry | None:
        """The live entry of ``tier``, to invalidate from and update in place."""
        entry = self._entries.get(tier)
        return entry if entry else None

    def pending(self, tier: str) -> bool:
        entry = self._entries.get(tier)
        return entry is not None and bool(entry)

    def record(self, tier: str, keys: Iterable[str] = (), pattern: str | None = None) -> None:
        entry = self._entries.setdefault(tier, JournalEntry())
        if entry.overflowed:
            return
        entry.keys.update(keys)
        if pattern is not None:
            entry.patterns.add(pattern)
        if len(entry.keys) + len(entry.patterns) > self._max_keys:
            entry.keys.clear()
            entry.patterns.clear()
            entry.overflowed = True

    def take(self, tier: str) -> JournalEntry:
        """Remove and return what ``tier`` must invalidate."""
        return self._entries.pop(tier, None) or JournalEntry()

    def restore(self, tier: str, entry: JournalEntry) -> None:
        """Put back an entry whose replay failed, merged with anything recorded since."""
        current = self._entries.setdefault(tier, JournalEntry())
        current.merge(entry)
        if len(current.keys) + len(current.patterns) > self._max_keys:
            current.keys.clear()
            current.patterns.clear()
            current.overflowed = True
