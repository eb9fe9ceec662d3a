"""Redaction of credentials from text and log records, for every connector and the log file.

Kept apart from `connectors._http` so the terminal app can attach `RedactingFilter` to its log file
without importing httpx (about 70 ms of every start).
"""

from __future__ import annotations

import logging
import re

from pydantic import SecretStr

_KNOWN_SECRETS: set[str] = set()
"""Literal secret values seen by this process (tokens, keys); replaced wherever they appear."""

_SECRET_NAMES = (
    r"api[_-]?token|access[_-]?token|refresh[_-]?token|id[_-]?token|client[_-]?secret|password|passwd|"
    r"assertion|x-api-token|session[_-]?id|sessionid|private[_-]?key|security[_-]?token|secret|token"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), "***"),
    (re.compile(r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|session)\s+)?[^\s'\",}]+"),
     r"\1\2 ***"),
    (re.compile(r"\b(Bearer|Basic|bearer|basic)\s+(?=[^\s]*[0-9!._=/+-])[A-Za-z0-9._~+/!=-]{8,}"), r"\1 ***"),
    (re.compile(rf"(?i)((?:{_SECRET_NAMES})['\"]?\s*[:=]\s*['\"]?)[^\s&'\",}}]+"), r"\1***"),
    (re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]+"), "***"),
    (re.compile(r"\bpat-[a-z]{2,4}\d?-[A-Za-z0-9-]+"), "***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+"), "***"),
)


def register_secret(value: str | SecretStr | None) -> None:
    """Remember a secret value so `redact` replaces it wherever it shows up (short values are ignored)."""
    if value is None:
        return
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(text) >= 6:
        _KNOWN_SECRETS.add(text)
        for line in text.splitlines():
            if len(line.strip()) >= 16:
                _KNOWN_SECRETS.add(line.strip())


def redact(text: str) -> str:
    """`text` with credentials replaced by ***: known secret values, auth headers, token parameters."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the message and any traceback of every record it sees.

    The connector modules attach it to their own loggers and to httpx's; attach it to a handler
    to cover everything that handler writes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def protect_logger(logger: logging.Logger) -> logging.Logger:
    """Attach the redaction filter to `logger` (once) and return it."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
