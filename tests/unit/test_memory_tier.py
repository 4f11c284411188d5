"""The in-memory tier: bounded LRU, per-key TTL and Redis-like semantics."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest

from pitchey_cache import CommandError
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.tiers.memory import entry_cost
from tests.unit.fakes import FakeClock


def memory(
    clock: FakeClock, *, max_entries: int = 1000, max_bytes: int = 1024 * 1024
) -> MemoryTier:
    return MemoryTier(max_entries=max_entries, max_bytes=max_bytes, clock=clock)


# What an empty tier holds: its (empty) table.
EMPTY = MemoryTier(max_entries=1, max_bytes=1024).byte_count


async def held_by(clock: FakeClock, items: dict[str, bytes]) -> int:
    """What a tier holding just ``items`` counts against ``max_bytes``."""
    probe = memory(clock)
    await probe.set_many(items, 60)
    return probe.byte_count


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
    # Room for three entries of a one-letter key and a ten-byte value, table included.
    three = await held_by(clock, dict.fromkeys("abc", b"x" * 10))
    tier = memory(clock, max_bytes=three)
    for key in ("a", "b", "c"):
        await tier.set(key, b"x" * 10, 60, False)
    assert tier.byte_count == three
    await tier.get("a")

    await tier.set("d", b"y" * 10, 60, False)
    assert await tier.get("b") is None
    assert await tier.exists(["a", "c", "d"]) == 3
    assert tier.byte_count == three

    # A bigger value pushes out as many old entries as it needs.
    entry = entry_cost("a", b"x" * 10)
    await tier.set("e", b"z" * (10 + entry // 2), 60, False)
    assert await tier.exists(["a", "c"]) == 0
    assert await tier.exists(["d", "e"]) == 2
    assert tier.byte_count <= three


async def test_counts_what_keys_values_and_the_table_cost(clock: FakeClock) -> None:
    """Not the encoded length: the objects the process holds for each entry."""
    one = await held_by(clock, {"k": b"x" * 1000})
    assert one - EMPTY >= sys.getsizeof("k") + sys.getsizeof(b"x" * 1000) + 56 + 24
    many = await held_by(clock, {f"k{n}": b"x" * 10 for n in range(1000)})
    assert many >= sys.getsizeof(OrderedDict.fromkeys(f"k{n}" for n in range(1000)))
    assert many >= 1000 * entry_cost("k999", b"x" * 10)


async def test_byte_accounting_returns_to_an_empty_tiers(tier: MemoryTier) -> None:
    await tier.set("a", b"1" * 100, 60, False)
    await tier.set_many({"b": b"2" * 50, "c": b"3"}, 60)
    await tier.set("a", b"short", 60, False)
    await tier.incr("n", 5)
    await tier.expire("b", 10)
    assert tier.byte_count > 0

    assert await tier.delete(["a", "b"]) == 2
    assert await tier.delete_matching("*") == 2
    assert tier.entry_count == 0
    assert tier.byte_count == EMPTY


# -- TTL ---------------------------------------------------------------------


async def test_expired_entry_is_a_miss(tier: MemoryTier, clock: FakeClock) -> None:
    await tier.set("k", b"v", 10, False)
    clock.advance(9.999)
    assert await tier.get("k") == b"v"
    clock.advance(0.001)
    assert await tier.get("k") is None
    assert await tier.exists(["k"]) == 0
    assert await tier.get_many(["k"]) == [None]
    assert tier.byte_count == EMPTY


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


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@pytest.mark.parametrize(
    "stored",
    [str(2**63).encode(), str(INT64_MIN - 1).encode(), b"007", b"-0", b"+1", b" 1", b"1 "],
)
async def test_incr_refuses_what_redis_does_not_read_as_a_64_bit_integer(
    tier: MemoryTier, stored: bytes
) -> None:
    await tier.set("k", stored, 60, False)
    with pytest.raises(CommandError, match="not an integer or out of range"):
        await tier.incr("k", -1)
    assert await tier.get("k") == stored


@pytest.mark.parametrize("amount", [INT64_MAX + 1, INT64_MIN - 1, 1.5, True, "1"])
async def test_incr_refuses_an_amount_that_is_not_a_64_bit_integer(
    tier: MemoryTier, amount: object
) -> None:
    await tier.set("n", b"5", 60, False)
    with pytest.raises(CommandError, match="not an integer or out of range"):
        await tier.incr("n", amount)  # type: ignore[arg-type]
    assert await tier.get("n") == b"5"


async def test_incr_reaches_both_64_bit_edges(tier: MemoryTier) -> None:
    await tier.set("hi", str(INT64_MAX - 1).encode(), 60, False)
    assert await tier.incr("hi", 1) == INT64_MAX
    await tier.set("lo", str(INT64_MIN + 1).encode(), 60, False)
    assert await tier.incr("lo", -1) == INT64_MIN
    assert await tier.incr("zero", INT64_MIN) == INT64_MIN
    with pytest.raises(CommandError, match="overflow"):
        await tier.incr("lo", -1)
    assert await tier.incr("lo", INT64_MAX) == -1


# -- expired entries are gone for every call ----------------------------------------


async def test_expired_entries_are_not_counted_by_a_pattern_delete(
    tier: MemoryTier, clock: FakeClock
) -> None:
    await tier.set("t", b"1", 1, False)
    await tier.set("live", b"1", 60, False)
    clock.advance(1)
    assert await tier.delete_matching("*") == 1
    assert tier.entry_count == 0
    assert tier.byte_count == EMPTY


async def test_counts_leave_out_expired_entries_nothing_read(
    tier: MemoryTier, clock: FakeClock
) -> None:
    await tier.set_many({"a": b"1", "b": b"2"}, 1)
    await tier.set("c", b"3", 60, False)
    clock.advance(1)
    assert tier.entry_count == 1
    assert tier.byte_count == await held_by(clock, {"c": b"3"})


async def test_expired_entries_go_before_live_ones_and_are_not_evictions(
    clock: FakeClock,
) -> None:
    tier = memory(clock, max_entries=3)
    await tier.set("old", b"1", 60, False)
    await tier.set_many({"x": b"1", "y": b"2"}, 1)
    clock.advance(1)
    await tier.set("new", b"1", 60, False)
    await tier.set("newer", b"1", 60, False)
    # The expired x and y made the room; the least recently used live key stayed.
    assert await tier.exists(["old", "new", "newer"]) == 3
    assert tier.evictions == 0
    await tier.set("newest", b"1", 60, False)
    assert await tier.exists(["old"]) == 0
    assert tier.evictions == 1


async def test_ttl_rounds_to_the_nearest_second_as_redis_does(
    tier: MemoryTier, clock: FakeClock
) -> None:
    await tier.set("k", b"v", 10, False)
    clock.advance(0.4)
    assert await tier.ttl("k") == 10
    clock.advance(0.2)
    assert await tier.ttl("k") == 9
    clock.advance(9)
    assert await tier.ttl("k") == 0  # 0.4 s left
    clock.advance(0.4)
    assert await tier.ttl("k") == -2


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


# Redis matches bytes: "é" is two bytes (c3 a9), "日" three, "😀" four.
@pytest.mark.parametrize(
    ("pattern", "deleted"),
    [
        ("p:?", {"p:a"}),
        ("p:??", {"p:é"}),
        ("p:???", {"p:日"}),
        ("p:????", {"p:😀"}),
        ("p:[é]", set()),
        ("p:[é]?", {"p:é"}),
        ("p:[^a]?", {"p:é"}),
        ("p:é*", {"p:é"}),
        ("p:*?", {"p:a", "p:é", "p:日", "p:😀"}),
    ],
)
async def test_delete_matching_matches_bytes_as_redis_does(
    tier: MemoryTier, pattern: str, deleted: set[str]
) -> None:
    keys = ["p:a", "p:é", "p:日", "p:😀"]
    await tier.set_many(dict.fromkeys(keys, b"v"), 60)
    assert await tier.delete_matching(pattern) == len(deleted)
    assert {key for key in keys if not await tier.exists([key])} == deleted


async def test_delete_matching_takes_linear_time_on_many_stars(tier: MemoryTier) -> None:
    """A backtracking matcher would take ages here; Redis's and ours take microseconds."""
    await tier.set("p:" + "a" * 30_000, b"v", 60, False)
    assert await tier.delete_matching("p:" + "*a" * 40 + "*b") == 0
    assert await tier.delete_matching("p:" + "*a" * 40 + "*") == 1


async def test_delete_matching_regex_characters_are_literal(tier: MemoryTier) -> None:
    await tier.set_many({"p:a.c": b"1", "p:abc": b"2", "p:(x)+": b"3", "p:x": b"4"}, 60)
    assert await tier.delete_matching("p:a.c") == 1
    assert await tier.delete_matching("p:(x)+") == 1
    assert await tier.exists(["p:abc", "p:x"]) == 2


async def test_delete_matching_spans_newlines_in_keys(tier: MemoryTier) -> None:
    await tier.set("p:line1\nline2", b"v", 60, False)
    assert await tier.delete_matching("p:*") == 1
