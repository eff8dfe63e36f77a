"""dewy run as a systemd service (``dewy@NAME``): the :class:`dewy.host.Host` that systemd provides.

READY/STATUS/WATCHDOG/STOPPING notifications, listening sockets kept in the fd store
across dewy's own restarts, logs to the journal, the app's output as its own journal
stream, and each app generation in a transient scope (when dewy runs as root, which
creating units and switching the app's user need).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dewy import log
from dewy.settings import Settings
from dewy.sockets import HeldSockets
from dewy.systemd import sdnotify


class SystemdService:
    """Run as a systemd service (dewy@NAME): notifications, the fd store, the journal, a scope per generation."""

    def __init__(self) -> None:
        from dewy.systemd.units import SystemdManager

        self.manager = SystemdManager()
        self.unit = own_unit()
        self._streams: list = []

    def log_handler(self, app: str) -> logging.Handler:
        from dewy.systemd.journal import JournalHandler

        return JournalHandler(app)

    def sockets(self, addresses: list[tuple[str, int]], holders: list[int] = ()) -> HeldSockets:
        held = HeldSockets.reuse(addresses, sdnotify.take_listen_fds().values(), holders)
        sdnotify.store_fds(dict(zip(held.fdnames, held.fds)))  # systemd ignores fds it already holds
        return held

    def placement(self, settings: Settings):
        if os.geteuid() != 0:
            log.warning("systemd", "not running as root: the app runs as dewy's child, without its own unit")
            return None
        from dewy.systemd.units import AppScopes

        return AppScopes(self.manager, settings.app_name, settings.app, settings.stop_timeout)

    def app_output(self, app: str) -> tuple[int, int]:
        from dewy.systemd.journal import app_streams

        self._streams = list(app_streams(app))
        return self._streams[0].fileno(), self._streams[1].fileno()

    def ready(self, status: str) -> None:
        sdnotify.notify("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        sdnotify.notify(f"STATUS={text}")

    def stopping(self) -> None:
        sdnotify.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        return sdnotify.watchdog_interval()

    def ping(self) -> None:
        sdnotify.notify("WATCHDOG=1")

    async def restarting(self) -> bool:
        return bool(self.unit) and await self.manager.restarting(self.unit)

    async def aclose(self) -> None:
        await self.manager.aclose()


def own_unit() -> str | None:
    """This process's systemd unit (``dewy@demo.service``), from its cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name = line.rpartition("/")[2]
        if name.endswith((".service", ".scope")):
            return name
    return None
