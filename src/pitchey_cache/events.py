"""State changes worth telling an operator: failovers, failbacks, journal replays."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pitchey_cache.clock import iso

logger = logging.getLogger("pitchey_cache")


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    kind: str  # "failover" | "failback" | "replay" | "replay-failed" | "node-down" | "node-up"
    tier: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "kind": self.kind, "tier": self.tier, "message": self.message}


class EventLog:
    """The last ``capacity`` events; each is also one log line."""

    def __init__(self, capacity: int = 100) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)

    def emit(self, event: Event) -> None:
        self._events.append(event)
        level = (
            logging.WARNING
            if event.kind in {"failover", "replay-failed", "node-down"}
            else (logging.INFO)
        )
        logger.log(level, "%s %s: %s", event.kind, event.tier, event.message)

    def recent(self) -> list[Event]:
        return list(self._events)
