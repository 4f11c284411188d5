"""Keys that may be stale on a tier, invalidated there before it serves them again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class JournalEntry:
    """What one tier must invalidate: keys and glob patterns, or (overflowed) its whole prefix.

    Each key and pattern carries the generation at which it was last
    recorded, so one that is recorded again while an invalidation of it is
    in flight stays pending.
    """

    keys: dict[str, int] = field(default_factory=dict)
    patterns: dict[str, int] = field(default_factory=dict)
    overflowed: bool = False
    # Keys whose write may still land on the tier, until when (monotonic seconds):
    # neither read nor invalidated there before that.
    fences: dict[str, float] = field(default_factory=dict)

    def fenced(self, keys: Iterable[str], now: float) -> bool:
        """Whether a write of one of ``keys`` may still land on the tier at ``now``."""
        fences = self.fences
        if not fences:
            return False
        for key in keys:
            until = fences.get(key)
            if until is not None:
                if until > now:
                    return True
                del fences[key]
        return False

    def __bool__(self) -> bool:
        return bool(self.keys or self.patterns or self.overflowed)


class InvalidationJournal:
    """Per tier, what was written elsewhere (or with an unknown outcome) since it last served.

    Bounded: once a tier's entry holds ``max_keys`` keys and patterns, it is
    marked overflowed and stops growing; the tier is then skipped until its
    whole key prefix has been deleted. That loses warm entries, never
    correctness.
    """

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._entries: dict[str, JournalEntry] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"<InvalidationJournal [{self.size} pending]>"

    @property
    def size(self) -> int:
        """Keys and patterns pending over all tiers (an overflowed tier counts its cap)."""
        return sum(self.count(tier) for tier in self._entries)

    def count(self, tier: str) -> int:
        """Keys and patterns pending for ``tier`` (its cap once overflowed)."""
        e = self._entries.get(tier)
        if e is None:
            return 0
        return self._max_keys if e.overflowed else len(e.keys) + len(e.patterns)

    def entry(self, tier: str) -> JournalEntry | None:
        """The live entry of ``tier``, or None when nothing is pending."""
        return self._entries.get(tier)

    def pending(self, tier: str) -> bool:
        # Entries are removed as soon as they are empty, so this is one lookup.
        return tier in self._entries

    def record(
        self,
        tier: str,
        keys: Iterable[str] = (),
        pattern: str | None = None,
        *,
        fence_until: float | None = None,
    ) -> None:
        """Invalidate ``keys`` and ``pattern`` on ``tier`` before it serves them again.

        ``fence_until``: the write was sent to ``tier`` and may still land there
        until then (monotonic seconds); the keys wait for it to pass.
        """
        if not keys and pattern is None:
            return
        entry = self._entries.setdefault(tier, JournalEntry())
        if entry.overflowed:
            return
        self._generation += 1
        for key in keys:
            entry.keys[key] = self._generation
            if fence_until is not None and fence_until > entry.fences.get(key, 0.0):
                entry.fences[key] = fence_until
        if pattern is not None:
            entry.patterns[pattern] = self._generation
        if len(entry.keys) + len(entry.patterns) > self._max_keys:
            self.overflow(tier)

    def overflow(self, tier: str) -> None:
        """From now on, ``tier`` needs its whole prefix invalidated before it serves."""
        entry = self._entries.setdefault(tier, JournalEntry())
        entry.keys.clear()
        entry.patterns.clear()
        entry.overflowed = True
        # Fences stay: the prefix is invalidated only once they have passed.

    def settle(
        self,
        tier: str,
        keys: Mapping[str, int] | None = None,
        patterns: Mapping[str, int] | None = None,
    ) -> None:
        """These were invalidated; forget each unless it was recorded again since."""
        entry = self._entries.get(tier)
        if entry is None:
            return
        for key, generation in (keys or {}).items():
            if entry.keys.get(key) == generation:
                del entry.keys[key]
                entry.fences.pop(key, None)
        for pattern, generation in (patterns or {}).items():
            if entry.patterns.get(pattern) == generation:
                del entry.patterns[pattern]
        if not entry:
            del self._entries[tier]

    def settle_overflow(self, tier: str) -> None:
        """The whole prefix was invalidated on ``tier``."""
        self._entries.pop(tier, None)
