"""Structured JSON logs with secret redaction.

Every line on stderr is one JSON object: `ts`, `level`, `service`, `logger`, `msg`, then
any `extra={...}` fields, then `exc` (the traceback) when there is one.  A log shipper
or `jq` reads it without a grammar.

Secrets leak into logs by accident (an exception message quoting a request URL, a
header dict in a debug line), so redaction sits on the handler and rewrites every
record before any formatter sees it: configured secret values, `signature=<hex>` query
parameters and `X-MBX-APIKEY` header values all become `***`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

REDACTED = "***"
# Shorter "secrets" would blank out ordinary words; real keys are 64 characters.
MIN_SECRET_LEN = 4

_SIGNATURE_RE = re.compile(r"""(signature["']?\s*[=:]\s*["']?)[0-9a-fA-F]+""", re.IGNORECASE)
_APIKEY_RE = re.compile(r"""(x-mbx-apikey["']?\s*[=:]\s*["']?)[^"'\s,;&)}]+""", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class Redactor:
    """Replaces secret values and signed-request fragments in text with `***`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len)
        # Longest first, so a secret containing another secret is removed whole.
        pattern = "|".join(re.escape(s) for s in reversed(values))
        self._secrets = re.compile(pattern) if pattern else None

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        if "ignature" in text or "IGNATURE" in text:
            text = _SIGNATURE_RE.sub(r"\g<1>" + REDACTED, text)
        if "pikey" in text or "PIKEY" in text:
            text = _APIKEY_RE.sub(r"\g<1>" + REDACTED, text)
        return text

    def value(self, obj: Any) -> Any:
        """Redact strings inside an `extra` value, keeping its shape."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        if isinstance(obj, bytes | bytearray):
            return self(bytes(obj).decode("utf-8", "replace"))
        return obj


class RedactingFilter(logging.Filter):
    """Handler filter: renders message and traceback once, redacted, onto the record."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not lose the line
            message = f"{record.msg!r} (unformattable args {record.args!r})"
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._fmt.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        for key, val in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, self.redactor.value(val))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; non-JSON values in extras are written with str()."""

    def __init__(self, service: str, instance: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.instance is not None:
            out["instance"] = self.instance
        for key, val in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in out:
                out[key] = val
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def secrets_of(settings: Any) -> list[str]:
    """The secret values configured in `Settings` (API key, secret, session secret)."""
    found = []
    for name in ("api_key", "api_secret", "session_secret"):
        secret = getattr(settings, name, None)
        if secret is not None:
            found.append(secret.get_secret_value())
    return found


def setup_logging(
    service: str,
    level: str | int = "INFO",
    *,
    secrets: Iterable[str | None] = (),
    instance: str | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route every logger through one redacting JSON handler on stderr.

    Idempotent: a second call replaces the handler installed by the first, so tests
    and `slt up` can call it per service.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_slt_handler", False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._slt_handler = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    handler.setFormatter(JsonFormatter(service, instance))
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log is one line per health probe; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
