"""Secrets never reach a log, a file, a status or a payload.

One place knows what a secret looks like: credentials in a URL (``user:pass@``), token-like
query parameters, ``Authorization`` values, and any value registered at run time (a webhook
URL read from a Secret, a bearer token). Every output path (logging, the state file, status,
Events, notifications, ``-o json``) passes its text through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"

_lock = threading.Lock()
_registered: set[str] = set()

# scheme://user:password@host  or  scheme://token@host
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+)@")
# ?token=...&api_key=...  (values of parameters whose names say they are secret)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[a-z0-9_.-]*?)(?:token|secret|password|passwd|pwd|api[_-]?key|apikey|auth|sig|signature|key)"
    r"[a-z0-9_.-]*=)(?P<value>[^&#\s\"']+)",
    re.IGNORECASE,
)
# Authorization: Bearer xyz / Basic xyz
_AUTH_HEADER = re.compile(r"(?P<key>\b(?:Bearer|Basic|Token)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears from now on (short values are ignored)."""
    if value and len(value) >= 6:
        with _lock:
            _registered.add(value)


def redact(text: str) -> str:
    """``text`` with every secret it holds replaced by ``***``."""
    if not text:
        return text
    with _lock:
        registered = sorted(_registered, key=len, reverse=True)
    for secret in registered:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_url(url: str) -> str:
    """A URL safe to show: no credentials, no secret query values (the path is kept)."""
    return redact(url)


def redact_value(value: Any) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Formats the record's message once, redacted, so no handler can print the secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        for key, value in list(record.__dict__.items()):
            if key in _RECORD_FIELDS or key.startswith("_"):
                continue
            if isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
