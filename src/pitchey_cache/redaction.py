"""How a secret is hidden wherever text may reach a user: messages, logs, reprs.

Everything that masks a password or token masks it here, the same way.
"""

from __future__ import annotations

import re
from typing import Final

REDACTED: Final = "**********"

_URL_CREDENTIALS = re.compile(r"://[^\s'\"]*@")
_CREDENTIALS = re.compile(r"[^\s'\"@]*@")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each secret replaced by ``**********``.

    Empty and missing secrets are skipped (replacing "" would mask every gap).
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact_credentials(text: str) -> str:
    """Hide a ``user:password@`` part, as in ``redis://:pw@host``, behind ``***@``."""
    return _CREDENTIALS.sub("***@", _URL_CREDENTIALS.sub("://***@", text))
