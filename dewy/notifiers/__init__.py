"""The Notifier interface: where people are told about deploys and failures."""

from __future__ import annotations

from typing import Protocol

from dewy.urls import Plugins

NOTIFIERS = Plugins("notifier", {})


class Notifier(Protocol):
    async def send(self, title: str, text: str, *, ok: bool) -> None:
        """Deliver one message; failures are the caller's to log, never to block a deploy."""

    async def aclose(self) -> None:
        """Release connections."""
