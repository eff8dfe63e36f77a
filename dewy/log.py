"""Logging: one logger, events with structured fields, text or JSON on stderr.

Every record may carry an event name (``deployed``, ``rollback``...) and fields
(``version=...``). The text and JSON formatters print them; the journald
handler (systemd issue) maps them to DEWY_EVENT / DEWY_* journal fields.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from dewy.errors import ArtifactNotReady
from dewy.faults import kind_of

logger = logging.getLogger("dewy")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


def event(level: int, name: str, msg: str, **fields: Any) -> None:
    """Log ``msg`` as event ``name`` with context fields (None values are dropped)."""
    logger.log(level, msg, extra={"dewy_event": name, "dewy_fields": {k: v for k, v in fields.items() if v is not None}})


def info(name: str, msg: str, **fields: Any) -> None:
    event(logging.INFO, name, msg, **fields)


def warning(name: str, msg: str, **fields: Any) -> None:
    event(logging.WARNING, name, msg, **fields)


def error(name: str, msg: str, **fields: Any) -> None:
    event(logging.ERROR, name, msg, **fields)


def debug(name: str, msg: str, **fields: Any) -> None:
    event(logging.DEBUG, name, msg, **fields)


@contextmanager
def attempt(name: str, what: str) -> Iterator[None]:
    """Log a debug event ``name`` with the block's outcome (ok, waiting, or error with its kind), for metrics."""
    try:
        yield
    except ArtifactNotReady:
        debug(name, f"{what}: waiting for an artifact", outcome="waiting")
        raise
    except Exception as exc:
        debug(name, f"{what} failed", outcome="error", kind=kind_of(exc))
        raise
    debug(name, what, outcome="ok")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(record, "dewy_event", None):
        out["event"] = record.dewy_event
    out.update(getattr(record, "dewy_fields", {}))
    return out


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={_quote(v)}" for k, v in fields_of(record).items())
        line = f"{_timestamp(record)} {record.levelname:<5} {record.getMessage()}"
        return f"{line} {context}" if context else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"time": _timestamp(record), "level": record.levelname.lower(), "msg": record.getMessage()}
        body.update(fields_of(record))
        return json.dumps(body, default=str)


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def setup(level: str = "info", fmt: str = "text", handler: logging.Handler | None = None) -> None:
    """Log to ``handler`` (the journal under systemd), else to stderr as text or JSON."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(LEVELS[level])
    logger.propagate = False
