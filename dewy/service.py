"""What dewy runs under: systemd, or a plain process (a laptop, a CI job, a container).

The daemon talks to one of these two adapters and never checks which it has.
Under systemd: READY/STATUS/WATCHDOG/STOPPING notifications, listening sockets
kept in the fd store across dewy's own restarts, logs to the journal, the app's
output as its own journal stream, and each app generation in a transient scope
(when dewy runs as root, which creating units and switching the app's user need).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dewy import log, sdnotify
from dewy.settings import Settings
from dewy.sockets import HeldSockets


class PlainProcess:
    """No service manager: stderr logs, sockets bound here, the app a child process group."""

    def log_handler(self, app: str) -> logging.Handler | None:
        return None

    def sockets(self, addresses: list[tuple[str, int]], holders: list[int] = ()) -> HeldSockets:
        """Bound here, unless whoever started dewy passed them (socket activation, LISTEN_FDS: systemd-socket-activate,
        a supervisor keeping the port across dewy's restarts) or ``holders`` (the proven pids of the app
        generation still serving) hold them; inherited sockets not configured are closed."""
        return HeldSockets.reuse(addresses, sdnotify.take_listen_fds().values(), holders)

    def placement(self, settings: Settings):
        return None

    def app_output(self, app: str) -> tuple[int, int] | None:
        return None

    def ready(self, status: str) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def stopping(self) -> None:
        pass

    def watchdog_interval(self) -> float | None:
        return None

    def ping(self) -> None:
        pass

    async def restarting(self) -> bool:
        """Is dewy being restarted (so the app should keep running for the next dewy)? Never outside systemd."""
        return False

    async def aclose(self) -> None:
        pass


class SystemdService(PlainProcess):
    """Run as a systemd service (dewy@NAME): notifications, the fd store, the journal, a scope per generation."""

    def __init__(self) -> None:
        from dewy.units import SystemdManager

        self.manager = SystemdManager()
        self.unit = own_unit()
        self._streams: list = []

    def log_handler(self, app: str) -> logging.Handler:
        from dewy.journal import JournalHandler

        return JournalHandler(app)

    def sockets(self, addresses: list[tuple[str, int]], holders: list[int] = ()) -> HeldSockets:
        held = HeldSockets.reuse(addresses, sdnotify.take_listen_fds().values(), holders)
        sdnotify.store_fds(dict(zip(held.fdnames, held.fds)))  # systemd ignores fds it already holds
        return held

    def placement(self, settings: Settings):
        if os.geteuid() != 0:
            log.warning("systemd", "not running as root: the app runs as dewy's child, without its own unit")
            return None
        from dewy.units import AppScopes

        return AppScopes(self.manager, settings.app_name, settings.app, settings.stop_timeout)

    def app_output(self, app: str) -> tuple[int, int]:
        from dewy.journal import app_streams

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


def detect() -> PlainProcess:
    """systemd when it started us (NOTIFY_SOCKET) and its Python bindings are there, else a plain process."""
    if not sdnotify.under_systemd():
        return PlainProcess()
    try:
        import dbus_next  # noqa: F401
        from systemd import journal  # noqa: F401
    except ImportError as exc:
        log.warning("systemd", f"run by systemd but {exc.name} is not installed: plain process supervision, stderr logs")
        return PlainProcess()
    return SystemdService()
