"""Keep tokens that callers put in query strings out of the access log."""

from __future__ import annotations

import logging
import re

from pitchey_cache.redaction import REDACTED


class RedactTokenFilter(logging.Filter):
    """Masks ``token=``, ``_token=`` and ``access_token=`` values in log lines.

    Those endpoints refuse a token in the query string, but uvicorn logs the
    request line before anyone answers it.
    """

    _PATTERN = re.compile(r"(?<=[?&])((?:_|access_)?token=)[^&\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._PATTERN.sub(rf"\1{REDACTED}", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self._PATTERN.sub(rf"\1{REDACTED}", record.msg)
        return True


def redact_tokens_in_access_logs() -> None:
    """Install :class:`RedactTokenFilter` on uvicorn's loggers, once."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokenFilter) for f in logger.filters):
            logger.addFilter(RedactTokenFilter())
