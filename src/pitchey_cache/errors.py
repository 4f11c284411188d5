"""One error root for everything pitchey-cache raises.

Backend failures never reach callers of :class:`~pitchey_cache.Cache`: the
router catches :class:`TierUnavailable` and serves the call from the next
tier. What does reach callers is their own mistake (a bad setting, an
oversized value, a command that makes no sense for the stored value).
"""

from __future__ import annotations

from pitchey_cache.redaction import redact_credentials

__all__ = [
    "CacheError",
    "CommandError",
    "ConfigError",
    "InvalidKeyError",
    "TierUnavailable",
    "UnsupportedValueError",
    "ValueTooLargeError",
    "redact_credentials",
]


class CacheError(Exception):
    """Root of every error pitchey-cache raises."""


class ConfigError(CacheError, ValueError):
    """A setting is missing or malformed.

    The message names the variable, the offending value (secrets redacted)
    and what was expected.
    """

    def __init__(self, variable: str, value: str | None, expected: str) -> None:
        self.variable = redact_credentials(variable)
        self.value = None if value is None else redact_credentials(value)
        self.expected = expected
        shown = "" if self.value is None else f" {self.value!r}"
        super().__init__(f"{self.variable}{shown}: {expected}")


class ValueTooLargeError(CacheError, ValueError):
    """A value's encoded size is over CACHE_MAX_VALUE_BYTES; nothing was sent."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(
            f"value for key {key!r} is {size} bytes encoded, over CACHE_MAX_VALUE_BYTES={limit}"
        )


class InvalidKeyError(CacheError, ValueError):
    """A key (or pattern) is not a str, or cannot be encoded as UTF-8."""


class UnsupportedValueError(CacheError, TypeError):
    """A value is neither JSON-serializable nor bytes."""


class CommandError(CacheError):
    """The backend refused a command for a reason that is the caller's.

    For example ``incr`` on a key that holds text. The backend is healthy;
    another tier would answer the same, so the call is not failed over.
    """


class TierUnavailable(CacheError):  # noqa: N818 - a state, named as the guide names it
    """A tier could not serve a call: refused, reset, timed out or not connected.

    Raised by tiers and caught by the router, which serves the call from the
    next tier. ``retryable`` says whether the same call may succeed on a
    second attempt at this tier (the command certainly did not run).
    """

    def __init__(
        self, tier: str, reason: str, *, retryable: bool = False, node_fault: bool = True
    ) -> None:
        self.tier = tier
        self.reason = reason
        self.retryable = retryable
        # False for a redirect glide gave up following: the slot is moving, the node is fine.
        self.node_fault = node_fault
        super().__init__(f"{tier} unavailable: {reason}")
