"""What dewy runs under: systemd, or a plain process (a laptop, a CI job, a container).

The daemon and the deploy targets talk to one :class:`Host` and never check which
they have: :class:`PlainProcess` here, or :class:`dewy.systemd.service.SystemdService`
(imported only when systemd started dewy).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dewy import log
from dewy.settings import Settings
from dewy.sockets import HeldSockets
from dewy.systemd import sdnotify


class Host(Protocol):
    """The service manager's side of dewy's life: logs, held sockets, where the app runs, readiness and the watchdog."""

    def log_handler(self, app: str) -> logging.Handler | None:
        """Where dewy's log records go; None: stderr."""

    def sockets(self, addresses: list[tuple[str, int]], holders: list[int] = ()) -> HeldSockets:
        """The listening sockets for ``addresses``, kept across dewy's restarts where the host can."""

    def placement(self, settings: Settings) -> Any:
        """Where app generations run beyond their own process group (a :class:`dewy.server.supervisor.Placement`)."""

    def app_output(self, app: str) -> tuple[int, int] | None:
        """fds for the app's stdout and stderr; None: dewy's own."""

    def ready(self, status: str) -> None: ...

    def status(self, text: str) -> None: ...

    def stopping(self) -> None: ...

    def watchdog_interval(self) -> float | None:
        """How often to tell the watchdog dewy is fine; None: no watchdog."""

    def ping(self) -> None: ...

    async def restarting(self) -> bool:
        """Is dewy being restarted (so the app should keep running for the next dewy)?"""

    async def aclose(self) -> None: ...


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


def detect() -> Host:
    """systemd when it started us (NOTIFY_SOCKET) and its Python bindings are there, else a plain process."""
    if not sdnotify.under_systemd():
        return PlainProcess()
    try:
        import dbus_next  # noqa: F401
        from systemd import journal  # noqa: F401
    except ImportError as exc:
        log.warning("systemd", f"run by systemd but {exc.name} is not installed: plain process supervision, stderr logs")
        return PlainProcess()
    from dewy.systemd.service import SystemdService

    return SystemdService()
