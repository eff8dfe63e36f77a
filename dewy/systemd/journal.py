"""journald: dewy's log records as structured journal entries, the app's output streams, and reading history.

Under systemd, every log record becomes a journal entry with DEWY_APP, DEWY_EVENT and
the record's fields as DEWY_* (DEWY_VERSION, DEWY_PREVIOUS_VERSION, DEWY_RELEASE_DIR,
...) and a fixed MESSAGE_ID per event type, so ``journalctl -u dewy@NAME
DEWY_EVENT=deployed`` is the host's audit log. Uses python-systemd (imported only here,
only under systemd).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, BinaryIO

from dewy.log import fields_of

# MESSAGE_ID = uuid5(this namespace, event name): fixed forever for each event type,
# listed in the README (``python -m dewy.systemd.journal`` prints the table).
NAMESPACE = uuid.UUID("5f3a1d6e-9c4b-4e1a-8d2f-6b7c0a9e4d31")
HISTORY_EVENTS = ("deployed", "rollback", "deploy-failed", "restarted", "app-exited", "start-failed", "control")
DOCUMENTED_EVENTS = ("started", "deploying", "downloaded", *HISTORY_EVENTS, "after-hook-failed", "app-ready",
                     "app-adopted", "app-stopped", "notify-failed", "stopping",
                     # container mode
                     "pulled", "rollout-switched", "replicas-adopted", "rollout-interrupted", "replica-unhealthy",
                     # operators' commands (dewy.control): the audit event, a refused caller, a pin or pause at work
                     "control-refused", "held", "unpinned")
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def message_id(event: str) -> str:
    return uuid.uuid5(NAMESPACE, event).hex


class JournalHandler(logging.Handler):
    """Sends each record to journald with dewy's structured fields."""

    def __init__(self, app: str) -> None:
        super().__init__()
        from systemd import journal

        self.send = journal.send
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"DEWY_APP": self.app, "SYSLOG_IDENTIFIER": "dewy",
                                      "PRIORITY": PRIORITIES.get(record.levelno, 6)}
            for key, value in fields_of(record).items():
                fields["DEWY_" + key.upper().replace("-", "_")] = str(value)
            if "DEWY_EVENT" in fields:
                fields["MESSAGE_ID"] = message_id(fields["DEWY_EVENT"])
            self.send(record.getMessage(), **fields)
        except Exception:  # logging must never take the daemon down
            self.handleError(record)


def app_streams(identifier: str) -> tuple[BinaryIO, BinaryIO]:
    """Journal streams for the app's stdout (info) and stderr (error) under its own identifier."""
    from systemd import journal

    out = journal.stream(identifier, priority=6, level_prefix=True)
    err = journal.stream(identifier, priority=3, level_prefix=True)
    return out, err


def history(unit: str, limit: int | None = None) -> list[dict[str, str]]:
    """Deploys, rollbacks and failures of ``unit`` from the journal, oldest first."""
    from systemd import journal

    reader = journal.Reader()  # all boots: history outlives reboots
    reader.add_match(_SYSTEMD_UNIT=unit)
    for event in HISTORY_EVENTS:
        reader.add_match(DEWY_EVENT=event)  # matches on one field are OR-ed, on different fields AND-ed
    entries = []
    for entry in reader:
        entries.append({
            "time": entry["__REALTIME_TIMESTAMP"].isoformat(timespec="seconds"),
            "event": entry.get("DEWY_EVENT", ""),
            "version": entry.get("DEWY_VERSION", entry.get("DEWY_TO_VERSION", "")),
            "previous_version": entry.get("DEWY_PREVIOUS_VERSION", entry.get("DEWY_FROM_VERSION", "")),
            "message": entry.get("MESSAGE", ""),
        })
    return entries[-limit:] if limit else entries


if __name__ == "__main__":
    for name in DOCUMENTED_EVENTS:
        print(f"| `{name}` | `{message_id(name)}` |")
