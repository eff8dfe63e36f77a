"""Notifiers: where people are told about deploys and failures, and how often.

A notifier backend (slack://, mail://) is one module implementing :class:`Notifier`.
:class:`Notifications` fans each message out to all of them, never lets a failing
notifier block or break a deploy, and limits error spam (DESIGN.md section 5, step 11):
the 3rd consecutive error says further errors are suppressed; the next successful
cycle resets the count and says so.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Protocol

from dewy import log
from dewy.urls import Plugins

NOTIFIERS = Plugins("notifier", {
    "slack": "dewy.notifiers.slack:SlackNotifier",
    "mail": "dewy.notifiers.mail:MailNotifier",
    "smtp": "dewy.notifiers.mail:MailNotifier",
})

ERROR_LIMIT = 3
NOTIFY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Message:
    """One notification; backends render it (Slack attachment colour by ``outcome``, mail subject...)."""

    outcome: str  # "deployed", "rollback", "error", "recovered", "suppressed"
    summary: str  # one line, e.g. "deployed v1.2.3"
    app: str
    host: str
    version: str | None = None
    previous_version: str | None = None
    details: dict[str, str] = field(default_factory=dict)  # e.g. {"after hook output": "..."}

    @property
    def ok(self) -> bool:
        return self.outcome in ("deployed", "recovered")


class Notifier(Protocol):
    async def send(self, message: Message) -> None:
        """Deliver one message; raise DewyError with a one-line reason on failure."""

    async def aclose(self) -> None:
        """Release connections."""


class Notifications:
    def __init__(self, notifiers: list[Notifier], app: str) -> None:
        self.notifiers = notifiers
        self.app = app
        self.host = socket.gethostname()
        self.consecutive_errors = 0

    def message(self, outcome: str, summary: str, **kwargs) -> Message:
        return Message(outcome, summary, self.app, self.host, **kwargs)

    async def deployed(self, version: str, previous: str | None, **details: str) -> None:
        await self._send(self.message("deployed", f"deployed {version}", version=version,
                                      previous_version=previous, details=details))

    async def error(self, outcome: str, summary: str, version: str | None = None, **details: str) -> None:
        """An error of this cycle; from the ERROR_LIMIT-th in a row on, the rest are held back."""
        self.consecutive_errors += 1
        if self.consecutive_errors > ERROR_LIMIT:
            return
        if self.consecutive_errors == ERROR_LIMIT:
            details = {**details, "note": f"{ERROR_LIMIT} errors in a row: further errors are suppressed until a cycle succeeds"}
        await self._send(self.message(outcome, summary, version=version, details=details))

    async def cycle_succeeded(self) -> None:
        """A cycle without error: resets the limit, and says so if errors were being suppressed."""
        if self.consecutive_errors >= ERROR_LIMIT:
            await self._send(self.message("recovered", f"recovered after {self.consecutive_errors} consecutive errors;"
                                          " errors are reported again"))
        self.consecutive_errors = 0

    async def _send(self, message: Message) -> None:
        if not self.notifiers:
            return
        results = await asyncio.gather(*(asyncio.wait_for(n.send(message), NOTIFY_TIMEOUT) for n in self.notifiers),
                                       return_exceptions=True)
        for notifier, result in zip(self.notifiers, results):
            if isinstance(result, BaseException):
                reason = "timed out" if isinstance(result, TimeoutError) else str(result) or type(result).__name__
                log.warning("notify-failed", f"{type(notifier).__name__}: could not notify: {reason}",
                            outcome=message.outcome)

    async def aclose(self) -> None:
        for notifier in self.notifiers:
            await notifier.aclose()
