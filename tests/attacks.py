"""What the security tests throw at the cache: distinctive secrets (and a search for
them in whatever a user or an operator can see: log lines, exception messages, reprs,
HTTP bodies and headers), hostile keys, and a pickle that runs code when unpickled.

A secret counts as shown when any run of ``WINDOW`` characters of it appears, as is,
URL-encoded or base64-encoded (at each of the three byte alignments base64 can give
it inside a longer string). So a password that is only partly redacted
(``redis://:pw-Single-7Hq2/***@host``) or sits inside a Basic credential is found too.
"""

from __future__ import annotations

import base64
import functools
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

# Each has characters that URL-encoding and base64 change ("/" and "+"), so those
# forms differ from the secret itself.
SECRETS: Mapping[str, str] = {
    "REDIS_PASSWORD": "pw-Single-7Hq2/+",
    "REDIS_CLUSTER_PASSWORD": "pw-Cluster-4Rm9/+",
    "UPSTASH_REDIS_REST_TOKEN": "tok-Upstash-8Kd3/+",
    "CACHE_ADMIN_TOKEN": "adm-Token-2Vx6/+",
}
# Long enough that no honest message holds such a run by chance.
WINDOW = 10


@functools.cache
def forms(secret: str) -> Mapping[str, str]:
    """The spellings of ``secret`` to look for, by name."""
    raw = secret.encode()
    found = {
        "as is": secret,
        "URL-encoded": quote(secret, safe=""),
        "URL-encoded, lower-case hex": re.sub(
            "%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")
        ),
        "form-encoded": quote_plus(secret),
    }
    for offset in range(3):
        padded = b"\0" * offset + raw
        # Only the characters made of the secret's own bits, whatever surrounds it.
        start = -(-8 * offset // 6)
        end = 8 * len(padded) // 6
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            found[f"{name}, offset {offset}"] = encode(padded).decode()[start:end]
    return found


def _windows(form: str) -> Iterable[str]:
    if len(form) <= WINDOW:
        yield form
        return
    for start in range(len(form) - WINDOW + 1):
        yield form[start : start + WINDOW]


def shown(secret: str, text: str, *, ignore: str = "") -> str | None:
    """Where in ``text`` some form of ``secret`` appears, as a short excerpt; else None.

    Runs that also appear in ``ignore`` (what a request itself carried, which an
    answer may echo) do not count.
    """
    for name, form in forms(secret).items():
        for window in _windows(form):
            if window in ignore:
                continue
            at = text.find(window)
            if at != -1:
                excerpt = text[max(0, at - 40) : at + len(window) + 40]
                return f"{name}: ...{excerpt!r}..."
    return None


def leaks(text: str, secrets: Mapping[str, str] = SECRETS, *, ignore: str = "") -> list[str]:
    """One line per secret that ``text`` shows (see :func:`shown` for ``ignore``)."""
    out = []
    for variable, secret in secrets.items():
        where = shown(secret, text, ignore=ignore)
        if where is not None:
            out.append(f"{variable} ({where})")
    return out


# Keys that a naive protocol, glob or encoding would split, merge or widen.
HOSTILE_KEYS = [
    "line\r\nbreak",
    "\r\n",
    "\n",
    "with space",
    " leading",
    "trailing ",
    "\t",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "[a-z]*",
    "a*b?[c]\\d",
    "pitchey:*",
    "*:pitchey",
    "ünïcødé ✓ 映画 😀",
    "\x00nul",
    "\x7f\x1b[31m",
    "\u2028\u2029",
    "\ufeffbom",
    "e\u0301 vs \u00e9",
    ":",
    "{hashtag}",
    "k" * 10_000,
]


class _Armed:
    """Unpickling this creates ``marker``: proof of code execution if it ever appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def armed_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles, in the oldest and the newest protocol, whose loading creates ``marker``."""
    return {
        "pickle protocol 0": pickle.dumps(_Armed(marker), protocol=0),
        "pickle protocol 5": pickle.dumps(_Armed(marker), protocol=5),
    }
