"""Notifiers: where people are told about deploys and failures, and how often.

A notifier backend (slack://, mail://) is one module implementing :class:`Notifier`.
:class:`Notifications` fans each message out to all of them and limits error spam:
the ERROR_LIMIT-th consecutive error says further errors
are suppressed; the next successful cycle (or deploy) resets the count and says so, before
the deploy's own message.

A notifier never blocks or breaks a deploy: messages are queued per notifier and sent by a
background task (in order, each send bounded by NOTIFY_TIMEOUT); a failure or timeout is
logged (event ``notify-failed``) and the message dropped. At shutdown the queues get
DRAIN_TIMEOUT to empty.
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
NOTIFY_TIMEOUT = 30.0  # one send, retries and rate-limit waits included
QUEUE_SIZE = 100  # messages waiting per notifier; beyond that new ones are dropped (and logged)
DRAIN_TIMEOUT = 10.0  # at shutdown, how long queued messages may still take


@dataclass(frozen=True)
class Message:
    """One notification; backends render it (Slack attachment colour by ``outcome``, mail subject...)."""

    outcome: str  # "deployed", "rollback", "error", "recovered"
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
    quiet: bool  # the URL's quiet=true: deploys and recoveries are not sent, errors and rollbacks are

    async def send(self, message: Message) -> None:
        """Deliver one message; raise DewyError with a one-line reason on failure."""

    async def aclose(self) -> None:
        """Release connections."""


class Notifications:
    """The deploy cycle's one voice: what to tell (error limit) and telling it without waiting."""

    def __init__(self, notifiers: list[Notifier], app: str, *, timeout: float = NOTIFY_TIMEOUT,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.notifiers = notifiers
        self.app = app
        self.host = socket.gethostname()
        self.timeout = timeout
        self.queue_size = queue_size
        self.consecutive_errors = 0
        self._queues: list[asyncio.Queue[Message]] = []
        self._workers: list[asyncio.Task] = []

    def message(self, outcome: str, summary: str, **kwargs) -> Message:
        return Message(outcome, summary, self.app, self.host, **kwargs)

    async def deployed(self, version: str, previous: str | None, **details: str) -> None:
        """A deploy: a success, so a suppressed error streak ends first (its "recovered" comes before this)."""
        await self.cycle_succeeded()
        await self._send(self.message("deployed", f"deployed {version}", version=version,
                                      previous_version=previous, details=details))

    async def error(self, outcome: str, summary: str, version: str | None = None, **details: str) -> None:
        """An error of this cycle; the ERROR_LIMIT-th in a row says so, later ones are held back."""
        self.consecutive_errors += 1
        if self.consecutive_errors > ERROR_LIMIT:
            log.debug("notify-suppressed", f"error notification suppressed ({self.consecutive_errors} errors in a row)",
                      outcome=outcome)
            return
        if self.consecutive_errors == ERROR_LIMIT:
            details = {**details, "note": f"{ERROR_LIMIT} errors in a row: further errors are suppressed"
                                          " until a cycle succeeds"}
        await self._send(self.message(outcome, summary, version=version, details=details))

    async def cycle_succeeded(self) -> None:
        """A cycle without error: resets the limit, and says so if errors were being suppressed."""
        errors, self.consecutive_errors = self.consecutive_errors, 0
        if errors >= ERROR_LIMIT:
            await self._send(self.message("recovered", f"recovered after {errors} consecutive errors;"
                                          " errors are reported again"))

    async def _send(self, message: Message) -> None:
        """Queue ``message`` for every notifier and return at once; delivery runs in the background."""
        if not self.notifiers:
            return
        if not self._workers:
            for notifier in self.notifiers:
                queue: asyncio.Queue[Message] = asyncio.Queue(self.queue_size)
                self._queues.append(queue)
                self._workers.append(asyncio.create_task(self._work(notifier, queue),
                                                         name=f"notify-{type(notifier).__name__}"))
        for notifier, queue in zip(self.notifiers, self._queues):
            if message.ok and getattr(notifier, "quiet", False):  # quiet=true: only errors and rollbacks
                continue
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                log.warning("notify-dropped", f"{_name(notifier)}: {queue.qsize()} messages are waiting;"
                            f" dropped: {message.summary}", outcome=message.outcome)

    async def _work(self, notifier: Notifier, queue: asyncio.Queue[Message]) -> None:
        while True:
            message = await queue.get()
            try:
                await self._deliver(notifier, message)
            finally:
                queue.task_done()

    async def _deliver(self, notifier: Notifier, message: Message) -> None:
        try:
            await asyncio.wait_for(notifier.send(message), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of a notifier is logged, never raised into the deploy cycle
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {self.timeout:g}s"
            else:
                reason = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("notify-failed", f"{_name(notifier)}: could not notify: {reason}", outcome=message.outcome,
                        summary=message.summary)
        else:
            log.debug("notified", f"{_name(notifier)}: sent {message.summary!r}", outcome=message.outcome)

    async def flush(self) -> None:
        """Wait until every queued message was sent or failed (tests; shutdown)."""
        await asyncio.gather(*(queue.join() for queue in self._queues))

    async def aclose(self, drain: float = DRAIN_TIMEOUT) -> None:
        """Give queued messages ``drain`` seconds, then stop the senders and release the notifiers."""
        if self._workers:
            try:
                await asyncio.wait_for(self.flush(), drain)
            except TimeoutError:
                waiting = sum(queue.qsize() for queue in self._queues)
                log.warning("notify-dropped", f"stopping: {waiting} queued notification(s) not sent within {drain:g}s")
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers, self._queues = [], []
        for notifier in self.notifiers:
            try:
                await notifier.aclose()
            except Exception as exc:
                log.warning("notify-failed", f"{_name(notifier)}: closing: {exc}")


def _name(notifier: Notifier) -> str:
    return type(notifier).__name__
