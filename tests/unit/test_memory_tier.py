"""The in-memory tier: bounded LRU, per-key TTL and Redis-like semantics."""

from __future__ import annotations

import pytest

from pitchey_cache import CommandError
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock

# What one entry costs beyond its key and value bytes (MemoryTier's bookkeeping).
OVERHEAD = 64


def memory(
    clock: FakeClock, *, max_entries: int = 1000, max_bytes: int = 1024 * 1024
) -> MemoryTier:
    return MemoryTier(max_entries=max_entries, max_bytes=max_bytes, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tier(clock: FakeClock) -> MemoryTier:
    return memory(clock)


# -- bounds and LRU -----------------------------------------------------------


async def test_evicts_least_recently_used_entry_over_max_entries(clock: FakeClock) -> None:
    tier = memory(clock, max_entries=3)
    for key in ("a", "b", "c"):
        await tier.set(key, key.encode(), 60, False)
    # Reading "a" makes "b" the least recently used.
    assert await tier.get("a") == b"a"
    await tier.set("d", b"d", 60, False)

    assert await tier.get("b") is None
    assert [await tier.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
    assert tier.entry_count == 3
    assert tier.evictions == 1


async def test_overwriting_a_key_does_not_evict_another(clock: FakeClock) -> None:
    tier = memory(clock, max_entries=2)
    await tier.set("a", b"1", 60, False)
    await tier.set("b", b"1", 60, False)
    await tier.set("a", b"2", 60, False)
    assert await tier.get("a") == b"2"
    assert await tier.get("b") == b"1"
    assert tier.evictions == 0


async def test_evicts_least_recently_used_entries_over_max_bytes(clock: FakeClock) -> None:
    entry = 1 + 10 + OVERHEAD  # one-letter key, ten-byte value
    tier = memory(clock, max_bytes=3 * entry)
    for key in ("a", "b", "c"):
        await tier.set(key, b"x" * 10, 60, False)
    assert tier.byte_count == 3 * entry
    await tier.get("a")

    await tier.set("d", b"y" * 10, 60, False)
    assert await tier.get("b") is None
    assert await tier.exists(["a", "c", "d"]) == 3
    assert tier.byte_count == 3 * entry

    # A bigger value pushes out as many old entries as it needs.
    await tier.set("e", b"z" * (10 + entry), 60, False)
    assert await tier.exists(["a", "c"]) == 0
    assert await tier.exists(["d", "e"]) == 2
    assert tier.byte_count <= 3 * entry


async def test_byte_accounting_returns_to_zero(tier: MemoryTier) -> None:
    await tier.set("a", b"1" * 100, 60, False)
    await tier.set_many({"b": b"2" * 50, "c": b"3"}, 60)
    await tier.set("a", b"short", 60, False)
    await tier.incr("n", 5)
    await tier.expire("b", 10)
    assert tier.byte_count > 0

    assert await tier.delete(["a", "b"]) == 2
    assert await tier.delete_matching("*") == 2
    assert tier.entry_count == 0
    assert tier.byte_count == 0


# -- TTL ---------------------------------------------------------------------


async def test_expired_entry_is_a_miss(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set("k", b"v", 10, False)
    clock.advance(9.999)
    assert await tier.get("k") == b"v"
    clock.advance(0.001)
    assert await tier.get("k") is None
    assert await tier.exists(["k"]) == 0
    assert await tier.get_many(["k"]) == [None]
    assert tier.byte_count == 0


async def test_ttl_tells_missing_from_no_expiry_from_seconds_left(
    tier: MemoryTier, clock: FakeClock
) -> None:
    assert await tier.ttl("missing") == -2

    await tier.incr("counter", 1)  # a counter made by INCR has no expiry, as in Redis
    assert await tier.ttl("counter") == -1

    await tier.set("k", b"v", 10, False)
    assert await tier.ttl("k") == 10
    clock.advance(4)
    assert await tier.ttl("k") == 6
    clock.advance(6)
    assert await tier.ttl("k") == -2


async def test_expire_sets_a_new_ttl_only_on_live_keys(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set("k", b"v", 10, False)
    assert await tier.expire("k", 100) is True
    clock.advance(50)
    assert await tier.ttl("k") == 50
    assert await tier.expire("missing", 100) is False
    clock.advance(50)
    assert await tier.expire("k", 100) is False


async def test_set_many_applies_the_ttl_to_every_item(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set_many({"a": b"1", "b": b"2"}, 5)
    assert await tier.get_many(["a", "b", "c"]) == [b"1", b"2", None]
    clock.advance(5)
    assert await tier.get_many(["a", "b"]) == [None, None]


# -- INCR ----------------------------------------------------------------------


async def test_incr_counts_from_zero(tier: MemoryTier) -> None:
    assert await tier.incr("views", 1) == 1
    assert await tier.incr("views", 1) == 2
    assert await tier.incr("views", -5) == -3
    assert await tier.incr("other", 10) == 10
    assert await tier.get("views") == b"-3"


async def test_incr_keeps_the_expiry(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set("views", b"41", 10, False)
    clock.advance(3)
    assert await tier.incr("views", 1) == 42
    assert await tier.ttl("views") == 7
    clock.advance(7)
    assert await tier.get("views") is None
    # Once expired, the counter starts again from zero.
    assert await tier.incr("views", 1) == 1


@pytest.mark.parametrize("stored", [b'"text"', b"1.5", b"", b"12abc", b"\x0012", b"{}"])
async def test_incr_on_a_non_integer_is_a_command_error(tier: MemoryTier, stored: bytes) -> None:
    await tier.set("k", stored, 60, False)
    with pytest.raises(CommandError):
        await tier.incr("k", 1)
    assert await tier.get("k") == stored


async def test_incr_past_64_bits_is_a_command_error(tier: MemoryTier) -> None:
    await tier.set("k", str(2**63 - 1).encode(), 60, False)
    with pytest.raises(CommandError):
        await tier.incr("k", 1)
    assert await tier.get("k") == str(2**63 - 1).encode()


# -- only_if_absent, delete, exists ------------------------------------------------


async def test_only_if_absent(tier: MemoryTier, clock: FakeClock) -> None:
    assert await tier.set("ip:1", b"1", 10, True) is True
    assert await tier.set("ip:1", b"2", 10, True) is False
    assert await tier.get("ip:1") == b"1"
    assert await tier.ttl("ip:1") == 10
    clock.advance(10)
    # An expired key is absent.
    assert await tier.set("ip:1", b"3", 10, True) is True
    assert await tier.get("ip:1") == b"3"


async def test_delete_and_exists_count_keys(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set_many({"a": b"1", "b": b"2", "c": b"3"}, 60)
    await tier.set("short", b"x", 1, False)
    clock.advance(1)

    assert await tier.exists(["a", "b", "missing", "short"]) == 2
    assert await tier.exists(["a", "a"]) == 2  # as Redis's EXISTS counts repeats
    assert await tier.delete(["a", "missing", "short"]) == 1
    assert await tier.delete(["b", "b"]) == 1
    assert await tier.delete(["a"]) == 0
    assert await tier.exists(["a", "b", "c"]) == 1


# -- delete_matching: Redis glob patterns ---------------------------------------------

KEYS = [
    "p:a",
    "p:ab",
    "p:abc",
    "p:b",
    "p:*",
    "p:?",
    "p:[x]",
    "p:x",
    "p:a*c",
    "p:a?c",
    "p:\\",
    "q:a",
]


@pytest.mark.parametrize(
    ("pattern", "deleted"),
    [
        ("p:*", {k for k in KEYS if k.startswith("p:")}),
        ("p:a*", {"p:a", "p:ab", "p:abc", "p:a*c", "p:a?c"}),
        ("p:?", {"p:a", "p:b", "p:*", "p:?", "p:x", "p:\\"}),
        ("p:a?", {"p:ab"}),
        ("p:[ab]", {"p:a", "p:b"}),
        ("p:[^a]", {"p:b", "p:*", "p:?", "p:x", "p:\\"}),
        ("p:[a-b]*", {"p:a", "p:ab", "p:abc", "p:b", "p:a*c", "p:a?c"}),
        # Escaped glob characters match only themselves.
        ("p:\\*", {"p:*"}),
        ("p:\\?", {"p:?"}),
        ("p:\\[x\\]", {"p:[x]"}),
        ("p:a\\*c", {"p:a*c"}),
        ("p:a\\?c", {"p:a?c"}),
        ("p:\\\\", {"p:\\"}),
        # A lone "[" has no class to open and is literal.
        ("p:[", set()),
        ("nothing:*", set()),
    ],
)
async def test_delete_matching_follows_redis_glob_rules(
    tier: MemoryTier, pattern: str, deleted: set[str]
) -> None:
    await tier.set_many(dict.fromkeys(KEYS, b"v"), 60)
    assert await tier.delete_matching(pattern) == len(deleted)
    survivors = {key for key in KEYS if await tier.exists([key])}
    assert survivors == set(KEYS) - deleted


async def test_delete_matching_regex_characters_are_literal(tier: MemoryTier) -> None:
    await tier.set_many({"p:a.c": b"1", "p:abc": b"2", "p:(x)+": b"3", "p:x": b"4"}, 60)
    assert await tier.delete_matching("p:a.c") == 1
    assert await tier.delete_matching("p:(x)+") == 1
    assert await tier.exists(["p:abc", "p:x"]) == 2


async def test_delete_matching_spans_newlines_in_keys(tier: MemoryTier) -> None:
    await tier.set("p:line1\nline2", b"v", 60, False)
    assert await tier.delete_matching("p:*") == 1
