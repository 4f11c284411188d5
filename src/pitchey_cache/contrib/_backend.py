"""What the framework backends share: settings from options, one SyncCache per
configuration in a process, and how a framework's values become stored entries."""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from pitchey_cache.config import Settings
from pitchey_cache.errors import ConfigError, UnsupportedValueError
from pitchey_cache.serialization import encode
from pitchey_cache.sync import SyncCache

logger = logging.getLogger("pitchey_cache")

MISSING: Final[Any] = object()
# Every tier takes a TTL; "forever" is a century, which all of them store as given.
FOREVER_SECONDS: Final = 100 * 365 * 24 * 3600

# An entry a backend stores is a JSON value (as the Cache stores it, so an integer
# is what INCR works on), or bytes starting with one of these tags: the entry says
# its own format, so a JSON-mode reader recognises a pickle and never loads it.
_RAW_BYTES: Final = b"b"
_PICKLE: Final = b"p"


class Serializer(StrEnum):
    """How a backend stores values that are not JSON: ``json`` refuses them,
    ``pickle`` pickles them (and unpickles what it reads: opt-in only)."""

    JSON = "json"
    PICKLE = "pickle"

    @classmethod
    def parse(cls, where: str, raw: object) -> Serializer:
        try:
            return cls(str(raw).strip().lower())
        except ValueError:
            raise ConfigError(where, str(raw), "expected 'json' or 'pickle'") from None


class EntryCodec:
    """Turns a framework's values into what :class:`~pitchey_cache.Cache` stores, and back.

    Runs in the caller's thread (pickling a Django queryset may query the database).
    """

    def __init__(self, serializer: Serializer, *, framework: str) -> None:
        self.serializer = serializer
        self.framework = framework
        self.refused = 0
        if serializer is Serializer.PICKLE:
            logger.warning(
                "%s cache: SERIALIZER=pickle: values read from Redis are unpickled, so "
                "anyone who can write to that Redis can run code in this process",
                framework,
            )

    def dump(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            return _RAW_BYTES + bytes(value)
        if self.serializer is Serializer.PICKLE:
            try:
                encode(value)
            except UnsupportedValueError:
                return _PICKLE + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        return value

    def load(self, stored: Any) -> Any:
        """The value, or MISSING for an entry this codec must not or cannot read."""
        if not isinstance(stored, bytes):
            return stored
        tag, body = stored[:1], stored[1:]
        if tag == _RAW_BYTES:
            return body
        if tag == _PICKLE and self.serializer is Serializer.PICKLE:
            return pickle.loads(body)  # noqa: S301 - opt-in, warned about at start-up
        self.refused += 1
        if self.refused == 1:
            logger.warning(
                "%s cache: read an entry this backend will not load (%s); treated as a "
                "miss. A pickled entry is only loaded with SERIALIZER=pickle.",
                self.framework,
                "a pickle" if tag == _PICKLE else "bytes of unknown format",
            )
        return MISSING

    def hint(self, exc: UnsupportedValueError) -> UnsupportedValueError:
        """The Cache's refusal, with what to do about it in this framework."""
        return UnsupportedValueError(
            f"{exc}; other Python objects need the {self.framework} cache's "
            "serializer set to 'pickle' (see the README for what that means)"
        )


def settings_from_options(options: Mapping[str, Any], *, where: str) -> Settings:
    """Settings from the environment, with any variable overridden by ``options``."""
    known = set(Settings().describe())
    overrides: dict[str, str] = {}
    for name, value in options.items():
        if name not in known:
            raise ConfigError(
                f"{where}[{name!r}]",
                None,
                "expected a pitchey-cache variable such as REDIS_HOST or REDIS_CLUSTER_NODES",
            )
        overrides[name] = _as_variable(value)
    return Settings.from_env({**os.environ, **overrides})


def _as_variable(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


_registry_lock = threading.Lock()
_registry: dict[Settings, SyncCache] = {}


def _new_lock_in_child() -> None:
    # A lock another thread of the parent held at the fork stays held forever here.
    global _registry_lock  # noqa: PLW0603 - the child's own copy
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def shared_sync_cache(settings: Settings) -> SyncCache:
    """The process's SyncCache for these settings: frameworks make a backend per
    thread or per app, and all of them must share one cache (one set of clients,
    one health checker, one journal)."""
    with _registry_lock:
        cache = _registry.get(settings)
        if cache is None:
            cache = _registry[settings] = SyncCache(settings)
        return cache
