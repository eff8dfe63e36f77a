"""Admin API and metrics: upstream dewy's ``--admin-port`` endpoints and ``--telemetry`` series.

Import-light on purpose: the daemon loads the admin server (:mod:`dewy.telemetry.admin`)
only when it is wanted, and :mod:`dewy.telemetry.metrics` (prometheus-client) and
:mod:`dewy.telemetry.otlp` (the OpenTelemetry SDK) are imported only when asked for.
Metrics are derived from the log events dewy emits anyway, so no deploy code carries a
metrics object.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dewy.settings import Settings


def wanted(settings: Settings) -> bool:
    """Upstream serves the admin API in container mode, and in the other modes for its /metrics."""
    return settings.mode == "container" or settings.telemetry or settings.admin_port is not None


async def serving(settings: Settings, serve: Callable[[], Awaitable[int]]) -> int:
    """Run ``serve`` (the daemon), with the admin API beside it when :func:`wanted`."""
    if not wanted(settings):
        return await serve()
    from dewy.telemetry import admin

    return await admin.serving(settings, serve)
