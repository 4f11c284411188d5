"""State changes worth telling an operator: node and tier changes, failovers, replays."""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pitchey_cache.clock import iso

logger = logging.getLogger("pitchey_cache")

# Kinds an operator should look at; the others are good news or routine.
_WARNING_KINDS = frozenset({"failover", "replay-failed", "node-down"})


@dataclass(frozen=True, slots=True)
class Event:
    """One state change. ``kind`` is node-down, node-up, failover, failback,
    replay or replay-failed."""

    at: datetime
    kind: str
    tier: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "kind": self.kind, "tier": self.tier, "message": self.message}


EventCallback = Callable[[Event], None]


class EventLog:
    """The last ``capacity`` events; each is also one log line and goes to every subscriber.

    Log lines are plain text, or one JSON object each with ``json_lines``.
    A subscriber that raises is logged and kept; it never breaks a call.
    """

    def __init__(self, capacity: int = 100, *, json_lines: bool = False) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._json_lines = json_lines
        self._subscribers: list[EventCallback] = []
        # Events emitted since start, by kind (kept ones are only the last few).
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<EventLog [{len(self._events)} kept, {len(self._subscribers)} subscribers]>"

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback`` with every event from now on; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: Event) -> None:
        self._events.append(event)
        self.counts[event.kind] += 1
        level = logging.WARNING if event.kind in _WARNING_KINDS else logging.INFO
        if self._json_lines:
            logger.log(level, "%s", json.dumps({"event": "pitchey_cache", **event.as_json()}))
        else:
            logger.log(level, "%s %s: %s", event.kind, event.tier, event.message)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not break the cache
                logger.exception("event subscriber %r failed", callback)

    def recent(self) -> list[Event]:
        return list(self._events)
