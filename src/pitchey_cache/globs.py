"""Redis glob patterns: escaping literal text, and matching keys in Python."""

from __future__ import annotations

import functools
import re

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob that matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regular expression that fully matches what Redis's glob ``pattern`` does.

    Follows Redis's matcher (``stringmatchlen``): ``*``, ``?``, backslash
    escapes, and classes ``[abc]``, ``[^a]``, ``[a-z]`` where a reversed range
    is swapped, an unclosed class runs to the end of the pattern, ``[]``
    matches nothing and ``[^]`` any one character.
    """
    out: list[str] = []
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "\\" and i + 1 < end:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "[":
            i, piece = _class(pattern, i + 1)
            out.append(piece)
        else:
            out.append({"*": ".*", "?": "."}.get(char) or re.escape(char))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _class(pattern: str, i: int) -> tuple[int, str]:
    """The class that starts at ``pattern[i]`` (after ``[``): where it ends, and its regex."""
    negate = i < len(pattern) and pattern[i] == "^"
    i += negate
    members: list[str] = []
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            members.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "]":
            i += 1
            break
        elif i + 2 < len(pattern) and pattern[i + 1] == "-":
            low, high = sorted((char, pattern[i + 2]))
            members.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            members.append(re.escape(char))
            i += 1
    if not members:
        return i, "." if negate else "(?!)"
    return i, "[" + ("^" if negate else "") + "".join(members) + "]"
