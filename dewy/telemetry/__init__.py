"""Admin API and metrics: upstream dewy's ``--admin-port`` endpoints and ``--telemetry`` series.

Import-light on purpose: without ``--telemetry`` the daemon loads only the admin server
(:mod:`dewy.telemetry.admin`); :mod:`dewy.telemetry.metrics` (prometheus-client) and
:mod:`dewy.telemetry.otlp` (the OpenTelemetry SDK) are imported only when asked for.
Metrics are derived from the log events dewy emits anyway, so no deploy code carries a
metrics object.
"""
