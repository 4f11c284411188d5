"""Redis glob patterns: escaping literal text, and matching keys in Python as Redis does."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

# Redis's matcher gives up (no match) past this many nested ``*`` (CVE-2022-36021).
_MAX_STAR_NESTING = 1000


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob that matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@functools.lru_cache(maxsize=256)
def key_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of whether a key matches the Redis glob ``pattern``, as SCAN MATCH decides.

    Redis's matcher (``stringmatchlen``) works on the UTF-8 bytes of key and
    pattern: ``?`` and a class ``[...]`` match one byte, so ``??`` matches
    ``é`` and ``[é]`` matches no key at all (it is a class of two bytes).
    ``*``, backslash escapes and classes ``[abc]``, ``[^a]``, ``[a-z]``
    follow it too: a reversed range is swapped, ranges compare bytes as C's
    signed ``char`` does, an unclosed class runs to the end of the pattern,
    ``[]`` matches nothing and ``[^]`` any one byte.
    """
    raw = pattern.encode()
    tokens = _tokens(raw)
    # A key with no bytes never enters Redis's matching loop: only an empty
    # pattern matches it, and ``*`` alone, which SCAN doesn't filter at all.
    empty_matches = raw in {b"", b"*"}
    if _star_nesting(tokens) > _MAX_STAR_NESTING:
        return lambda key: not key and empty_matches
    regex = re.compile(b"".join(_regex(tokens)), re.DOTALL)

    def matches(key: str) -> bool:
        if not key:
            return empty_matches
        return regex.fullmatch(key.encode()) is not None

    return matches


# A token is ``*`` (None) or the set of byte values one key byte may take.
_Token = frozenset[int] | None
_ANY_BYTE: frozenset[int] = frozenset(range(256))


def _tokens(pattern: bytes) -> list[_Token]:
    tokens: list[_Token] = []
    i, end = 0, len(pattern)
    while i < end:
        byte = pattern[i]
        if byte == ord("*"):
            if not tokens or tokens[-1] is not None:  # ``**`` is ``*``
                tokens.append(None)
            i += 1
        elif byte == ord("?"):
            tokens.append(_ANY_BYTE)
            i += 1
        elif byte == ord("["):
            i, members = _class(pattern, i + 1)
            tokens.append(members)
        else:
            if byte == ord("\\") and i + 1 < end:
                i += 1
            tokens.append(frozenset((pattern[i],)))
            i += 1
    return tokens


def _signed(byte: int) -> int:
    """A byte as C's (signed) ``char`` holds it on the platforms Redis runs on."""
    return byte - 256 if byte >= 0x80 else byte  # noqa: PLR2004 - the sign bit


def _class(pattern: bytes, i: int) -> tuple[int, frozenset[int]]:
    """The class that starts at ``pattern[i]`` (after ``[``): where it ends, and its bytes."""
    end = len(pattern)
    negate = i < end and pattern[i] == ord("^")
    i += negate
    members: set[int] = set()
    while i < end:
        byte = pattern[i]
        if byte == ord("\\") and i + 1 < end:
            members.add(pattern[i + 1])
            i += 2
        elif byte == ord("]"):
            i += 1
            break
        elif i + 2 < end and pattern[i + 1] == ord("-"):
            low, high = sorted((_signed(byte), _signed(pattern[i + 2])))
            members.update(b % 256 for b in range(low, high + 1))
            i += 3
        else:
            members.add(byte)
            i += 1
    return i, frozenset(_ANY_BYTE - members if negate else members)


def _star_nesting(tokens: list[_Token]) -> int:
    """How deep Redis's matcher recurses: one level per ``*`` that something follows."""
    return sum(1 for n, token in enumerate(tokens) if token is None and n + 1 < len(tokens))


def _regex(tokens: list[_Token]) -> list[bytes]:
    """Regex pieces for ``tokens``.

    Every piece but ``*`` matches exactly one byte, so the first place where
    the text between two stars fits is as good as any later one: each such run
    is an atomic group that never backtracks, and a pattern like ``*a*a*a*b``
    costs linear time on a long key, as Redis's own matcher does.
    """
    runs: list[list[bytes]] = [[]]
    for token in tokens:
        if token is None:
            runs.append([])
        else:
            runs[-1].append(_byte_class(token))
    pieces = [b"".join(runs[0])]
    pieces.extend(b"(?>.*?" + b"".join(middle) + b")" for middle in runs[1:-1])
    if len(runs) > 1:
        pieces.append(b".*" + b"".join(runs[-1]))
    return pieces


def _byte_class(members: frozenset[int]) -> bytes:
    if not members:
        return b"(?!)"
    if members == _ANY_BYTE:
        return b"."
    if len(members) == 1:
        return re.escape(bytes(members))
    return b"[" + b"".join(re.escape(bytes((m,))) for m in sorted(members)) + b"]"
