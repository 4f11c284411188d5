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

    Supports ``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]`` and backslash escapes.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "[":
            end = pattern.find("]", i + 1)
            if end > i + 1:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
                i = end + 1
                continue
        out.append({"*": ".*", "?": "."}.get(char) or re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)
