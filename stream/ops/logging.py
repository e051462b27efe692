"""Structured logging with an allow-list: a log record can never carry a raw event.

``configure_logging(settings_or_format, level)`` installs one handler on the root
logger (stderr), in ``text`` (human) or ``json`` (one JSON object per line) format,
with :class:`SafeRecordFilter` in front of it. Rules, enforced for every record of
every logger (streamgate's, Faust's, librdkafka's):

* Output fields: ``ts``, ``level``, ``logger``, ``msg`` and the allow-listed extras
  (:data:`ALLOWED_EXTRA`). Any other ``extra=`` key is dropped.
* Extra values are type-restricted: ``None``, bool, int, float, short strings of
  safe characters (:data:`SAFE_STR`: names, topic names, reason codes, error
  text without quotes, braces or ``@``), flat lists of those, and flat dicts of
  numbers keyed by names (counts by reason). Anything else (bytes, nested
  containers, dicts with other values - an event is one -, long or unsafe strings)
  becomes ``"<redacted:TYPE>"``; a string holding a person token (``tk1_...``)
  becomes ``"<redacted:token>"``.
* The message format string is kept; its ``%`` arguments must be scalars passing
  the same check, so ``log.info("got %s", event)`` prints ``got <redacted:dict>``.
  (The format string itself is the developer's text: never build it with an
  f-string from data.)
* Exceptions: the traceback's frames are kept (file, line, function); the
  exception *message* only for streamgate's own errors
  (:class:`stream.errors.StreamgateError`, whose messages never carry values) —
  a third-party message (e.g. a JSON Schema error quoting an instance) is
  replaced by its type name.

The worker commands call ``configure_logging(settings, loglevel)`` and start the
Faust worker with ``override_logging=False`` so Faust keeps this configuration.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from stream.config import Settings
from stream.errors import StreamgateError

__all__ = ["ALLOWED_EXTRA", "SAFE_STR", "JsonFormatter", "SafeRecordFilter", "TextFormatter", "configure_logging",
           "safe_value"]

#: ``extra=`` keys a record may carry into the output. Counts, names, settings - never values.
ALLOWED_EXTRA = frozenset({
    "worker", "topic", "topics", "raw", "partition", "partitions", "offset", "guarantee", "consumed",
    "protected", "dead_lettered", "batches", "fail_closed_retries", "produce_retries", "reasons", "rate",
    "held", "retry_in_s", "error", "count", "n", "reason", "kind", "attempt", "seconds", "port", "interval_s",
    "dependency", "dependencies", "ready", "keys", "shredded", "due", "reports", "suppressed", "windows",
    "model", "metric", "attribute", "epoch", "lag", "events", "status", "group", "key_ids",
    # privatizer / shredder stats and events
    "at", "request_id", "repeated", "assigned", "epsilon_spent", "erasures_committed", "estimates_published",
    "fully_suppressed", "late", "memo_hits", "memo_resolved", "reported", "skipped", "ticks", "tombstone_topics",
    "windows_published",
    # engine, key store and learner events
    "changed", "keystore_resets", "recoveries", "resubscribes", "retries", "instance", "version", "why",
    "kek_id", "limit", "wraps",
})
#: Strings an extra or ``%`` argument may be: no quotes, braces, ``@``, backslashes or control characters.
SAFE_STR = re.compile(r"[A-Za-z0-9 _.,:;/=+()\[\]<>#%!?|*~-]{0,200}")
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_MAX_ITEMS = 64
_KEY_RE = re.compile(r"[a-z0-9_.-]{1,64}")
_TOKEN_RE = re.compile(r"\btk\d+_")  # streamgate's token prefix (stream.crypto.tokens)
_MARK = "_streamgate_safe"


def safe_value(value: Any, depth: int = 0) -> Any:
    """``value`` if it is of an allowed shape (see the module docstring), else ``"<redacted:TYPE>"``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if _TOKEN_RE.search(value):
            return "<redacted:token>"
        return value if SAFE_STR.fullmatch(value) else f"<redacted:{'str' if len(value) <= 200 else 'long str'}>"
    if depth == 0 and isinstance(value, list | tuple | set | frozenset) and len(value) <= _MAX_ITEMS:
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [safe_value(v, depth + 1) for v in items]
    if (depth == 0 and isinstance(value, dict) and len(value) <= _MAX_ITEMS
            and all(isinstance(k, str) and _KEY_RE.fullmatch(k) for k in value)
            and all(v is None or isinstance(v, int | float) for v in value.values())):
        return dict(value)  # counts by name, e.g. {"not_json": 3}
    return f"<redacted:{type(value).__name__}>"


def _safe_arg(value: Any) -> Any:
    """A ``%`` argument: scalars only (a container could be an event)."""
    if value is None or isinstance(value, bool | int | float | str):
        return safe_value(value)
    return f"<redacted:{type(value).__name__}>"


def _safe_exception(exc_info: Any) -> str | None:
    if not exc_info or exc_info[0] is None:
        return None
    etype, exc, tb = exc_info
    frames = "".join(f"\n  {f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb))
    shown = f"{etype.__name__}: {exc}" if isinstance(exc, StreamgateError) else f"{etype.__name__} (message withheld)"
    cause = exc.__cause__ if exc is not None else None
    if cause is not None:
        shown += f"\n  caused by {type(cause).__name__}"
    return f"Traceback (frames only):{frames}\n{shown}"


class SafeRecordFilter(logging.Filter):
    """Sanitizes a record in place: drops non-allow-listed extras, checks extra and ``%`` argument
    values, replaces exception info by a value-free rendering. Idempotent; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return True
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if isinstance(record.args, dict):  # "%(name)s" style: a mapping, which could be an event
                record.args = None
                record.msg = f"{record.msg} <redacted:mapping arguments>"
            else:
                record.args = tuple(_safe_arg(a) for a in args)
        if not isinstance(record.msg, str):
            record.msg = safe_value(record.msg)
            record.msg = str(record.msg)
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        for k in extras:
            del record.__dict__[k]
        record.__dict__["_streamgate_extra"] = {k: safe_value(v) for k, v in extras.items() if k in ALLOWED_EXTRA}
        if record.exc_info:
            record.__dict__["_streamgate_exc"] = _safe_exception(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.stack_info = None
        record.__dict__[_MARK] = True
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        return f"{record.msg} <unformattable arguments>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the allowed extras, ``exc`` when any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        for k, v in getattr(record, "_streamgate_extra", {}).items():
            out.setdefault(k, v)
        exc = getattr(record, "_streamgate_exc", None)
        if exc:
            out["exc"] = exc
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> <msg> key=value ...`` with the same allowed extras."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        line = f"{ts} {record.levelname} {record.name} {_message(record)}"
        extra = getattr(record, "_streamgate_extra", {})
        if extra:
            line += " " + " ".join(f"{k}={orjson.dumps(v, default=str).decode()}" for k, v in extra.items())
        exc = getattr(record, "_streamgate_exc", None)
        if exc:
            line += "\n" + exc
        return line


_HANDLER_NAME = "streamgate"


def configure_logging(settings_or_format: Settings | Literal["text", "json"] | str, level: str | int = "info") -> logging.Handler:
    """Install the allow-listed handler on the root logger (replacing any previous handlers) and
    return it. ``level`` accepts Python names and Faust's (``crit``, ``warn``)."""
    fmt = settings_or_format.log_format if isinstance(settings_or_format, Settings) else str(settings_or_format)
    if fmt not in ("text", "json"):
        raise ValueError("log format must be 'text' or 'json'")
    if isinstance(level, str):
        name = {"crit": "CRITICAL", "warn": "WARNING"}.get(level.lower(), level.upper())
        lvl = logging.getLevelName(name)
        if not isinstance(lvl, int):
            raise ValueError("unknown log level")
    else:
        lvl = level
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(SafeRecordFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
    logging.captureWarnings(True)
    return handler
