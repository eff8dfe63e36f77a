"""The ``--telemetry`` series, fed by dewy's log events and its state file.

Upstream dewy defines its instruments with OpenTelemetry names (``dewy.deployment.duration``,
unit ``s``) and its Prometheus endpoint shows them translated (``dewy_deployment_duration_seconds``):
dots become underscores, a unit word is appended unless the name has it, counters end in
``_total``. :class:`Series` keeps both spellings, so the Prometheus text here and the OTLP push
(:mod:`dewy.telemetry.otlp`) name every series as upstream does and dashboards keep working.

Counts come from the events the daemon logs anyway (:class:`EventMetrics`, a logging handler),
so no deploy code passes a metrics object around. What is a state rather than an event (the
deployed version, quarantined versions, the replicas) is read from the state file at scrape
time, so it is right from the first scrape after a restart.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dewy.state import ReplicaSet, app_from_json

prometheus_client.disable_created_metrics()  # upstream's endpoint has no *_created series

UNIT_WORDS = {"s": "seconds", "By": "bytes"}
OTEL_DEFAULT_BUCKETS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
CONTAINER_STATES = ("created", "running", "paused", "restarting", "exited", "dead")


@dataclass(frozen=True)
class Series:
    """One instrument: its OpenTelemetry name and unit, and the name upstream's Prometheus endpoint gives it."""

    name: str  # OpenTelemetry name: dewy.deployments.total
    kind: str  # counter | gauge | histogram
    unit: str  # UCUM: s, By, {deployment}
    help: str
    labels: tuple[str, ...] = ("command",)
    buckets: tuple[float, ...] = ()

    @property
    def exposed(self) -> str:
        """The Prometheus name, translated as upstream's exporter does (unit word, ``_total`` for counters)."""
        tokens = [t for t in re.split(r"[^A-Za-z0-9_]+", self.name) if t]
        word = UNIT_WORDS.get(self.unit, "" if self.unit.startswith("{") or self.unit in ("", "1") else self.unit)
        if word and word not in tokens:
            tokens.append(word)
        if self.kind == "counter":
            tokens = [t for t in tokens if t != "total"] + ["total"]
        return "_".join(tokens)


# upstream's series
DEPLOYMENTS = Series("dewy.deployments.total", "counter", "{deployment}", "Total number of successful deployments")
DEPLOYMENT_DURATION = Series("dewy.deployment.duration", "histogram", "s", "Duration of the deployment process",
                             buckets=(1, 5, 10, 30, 60, 120, 300, 600))
DEPLOYMENT_ERRORS = Series("dewy.deployment.errors.total", "counter", "{error}", "Total number of failed deployments")
HEALTHCHECKS = Series("dewy.healthchecks.total", "counter", "{check}", "Total number of health checks performed")
HEALTHCHECK_FAILURES = Series("dewy.healthchecks.failures.total", "counter", "{check}", "Total number of failed health checks")
SERVER_RESTARTS = Series("dewy.server.restarts.total", "counter", "{restart}",
                         "Managed-server restarts, by reason (deploy|signal)", ("command", "reason"))
PROXY_CONNECTIONS = Series("dewy.proxy.connections.total", "counter", "{connection}",
                           "Total number of proxy connections accepted", ("command", "proxy_port"))
PROXY_ACTIVE = Series("dewy.proxy.connections.active", "gauge", "{connection}",
                      "Number of currently active proxy connections", ("command", "proxy_port"))
PROXY_DURATION = Series("dewy.proxy.connection.duration", "histogram", "s", "Duration of proxy connections",
                        ("command", "proxy_port"), OTEL_DEFAULT_BUCKETS)
PROXY_LATENCY = Series("dewy.proxy.connect.latency", "histogram", "s", "Latency to establish connection to backend",
                       ("command", "proxy_port"), (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
PROXY_BYTES = Series("dewy.proxy.bytes.transferred", "counter", "By", "Total bytes transferred through proxy",
                     ("command", "proxy_port"))
PROXY_ERRORS = Series("dewy.proxy.errors.total", "counter", "{error}", "Total number of proxy errors",
                      ("command", "proxy_port"))
PROXY_BACKENDS = Series("dewy.proxy.backends", "gauge", "{backend}", "Number of active proxy backends")
CONTAINER_REPLICAS = Series("dewy.container.replicas", "gauge", "{replica}", "Number of running container replicas",
                            ("command", "app"))
CONTAINER_DESIRED = Series("dewy.container.desired_replicas", "gauge", "{replica}",
                           "Number of replicas Dewy is configured to run", ("command", "app"))
CONTAINER_STATUS = Series("dewy.container.status", "gauge", "", "1 for the container's current state, 0 otherwise",
                          ("command", "app", "container", "replica", "state"))
CONTAINER_INFO = Series("dewy.container.info", "gauge", "", "Always 1; carries image and version",
                        ("command", "app", "container", "replica", "image", "version"))
# dewy's own
ROLLBACKS = Series("dewy.rollbacks.total", "counter", "{rollback}", "New versions that did not start or become healthy and were rolled back")
APP_CRASHES = Series("dewy.app.crashes.total", "counter", "{crash}", "The serving app (or a replica) exited without being asked to")
POLLS = Series("dewy.polls.total", "counter", "{poll}", "Registry polls, by result (ok|error|waiting)", ("command", "result"))
REGISTRY_ERRORS = Series("dewy.registry.errors.total", "counter", "{error}", "Failed registry polls, by kind of failure",
                         ("command", "kind"))
GITHUB_RATE_LIMIT = Series("dewy.github.rate_limit.remaining", "gauge", "{request}",
                           "GitHub API requests left in the rate-limit window (X-RateLimit-Remaining)")
QUARANTINED = Series("dewy.quarantined.versions", "gauge", "{version}", "Versions quarantined after a rollback (never deployed again)")
DEPLOYED_VERSION = Series("dewy.deployed.version.info", "gauge", "", "Always 1; the deployed version is the version label",
                          ("command", "version"))
LAST_DEPLOY = Series("dewy.deployment.last_success.timestamp", "gauge", "s", "When the deployed version was deployed (Unix seconds)")

SERIES = (DEPLOYMENTS, DEPLOYMENT_DURATION, DEPLOYMENT_ERRORS, HEALTHCHECKS, HEALTHCHECK_FAILURES, SERVER_RESTARTS,
          PROXY_CONNECTIONS, PROXY_ACTIVE, PROXY_DURATION, PROXY_LATENCY, PROXY_BYTES, PROXY_ERRORS, PROXY_BACKENDS,
          CONTAINER_REPLICAS, CONTAINER_DESIRED, CONTAINER_STATUS, CONTAINER_INFO, ROLLBACKS, APP_CRASHES, POLLS,
          REGISTRY_ERRORS, GITHUB_RATE_LIMIT, QUARANTINED, DEPLOYED_VERSION, LAST_DEPLOY)
FROM_STATE = (CONTAINER_REPLICAS, CONTAINER_DESIRED, CONTAINER_STATUS, CONTAINER_INFO, QUARANTINED, DEPLOYED_VERSION,
              LAST_DEPLOY)


def by_exposed_name() -> dict[str, Series]:
    """Series by the family name prometheus-client reports (a counter's without ``_total``)."""
    return {s.exposed.removesuffix("_total") if s.kind == "counter" else s.exposed: s for s in SERIES}


class Metrics:
    """The series in a registry of their own (no process or platform collectors: upstream has none)."""

    def __init__(self, mode: str, app: str, state_file: Path, desired_replicas: int) -> None:
        self.mode = mode
        self.registry = CollectorRegistry(auto_describe=True)
        self.instruments: dict[Series, Any] = {}
        for series in SERIES:
            if series in FROM_STATE:
                continue
            kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[series.kind]
            options = {"buckets": series.buckets} if series.buckets else {}
            name = series.exposed.removesuffix("_total") if series.kind == "counter" else series.exposed
            self.instruments[series] = kind(name, series.help, series.labels, registry=self.registry, **options)
        self.registry.register(StateCollector(mode, app, state_file, desired_replicas))

    def of(self, series: Series, **labels: Any):
        return self.instruments[series].labels(command=self.mode, **{k: str(v) for k, v in labels.items()})

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class StateCollector(Collector):
    """The series that describe a state: read from the state file on each scrape (read-only, never repaired:
    not :meth:`State.load`, which sets an unreadable file aside); the replicas as :mod:`dewy.state` types them."""

    def __init__(self, mode: str, app: str, state_file: Path, desired_replicas: int) -> None:
        self.mode = mode
        self.app = app
        self.state_file = state_file
        self.desired = desired_replicas

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        current = state.get("current") or {}
        families = {s: GaugeMetricFamily(s.exposed, s.help, labels=s.labels) for s in FROM_STATE}
        families[QUARANTINED].add_metric([self.mode], len(state.get("quarantine") or {}))
        if current.get("tag"):
            families[DEPLOYED_VERSION].add_metric([self.mode, current["tag"]], 1)
            families[LAST_DEPLOY].add_metric([self.mode], datetime.fromisoformat(current["at"]).timestamp())
        if self.mode == "container":
            app = app_from_json(state.get("app"))
            name = self.app
            replicas = app.replicas if isinstance(app, ReplicaSet) else []
            families[CONTAINER_REPLICAS].add_metric([self.mode, name], sum(r.status == "running" for r in replicas))
            families[CONTAINER_DESIRED].add_metric([self.mode, name], self.desired)
            for r in replicas:
                base = [self.mode, name, r.name, str(r.replica)]
                for each in CONTAINER_STATES:
                    families[CONTAINER_STATUS].add_metric(base + [each], 1 if r.status == each else 0)
                families[CONTAINER_INFO].add_metric(base + [app.image or "", r.version or ""], 1)
        yield from (f for f in families.values() if f.samples)


class EventMetrics(logging.Handler):
    """Counts what the log events say happened. Thread-safe: the proxy logs from its own thread."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.DEBUG)
        self.metrics = metrics
        self._deploy_started: float | None = None
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        react = getattr(self, "_on_" + str(getattr(record, "dewy_event", "")).replace("-", "_"), None)
        if react is None:
            return
        try:
            react(getattr(record, "dewy_fields", {}))
        except Exception:  # a metric must never break logging
            self.handleError(record)

    def _count(self, series: Series, amount: float = 1, **labels: Any) -> None:
        self.metrics.of(series, **labels).inc(amount)

    def _on_deploying(self, fields: dict) -> None:
        with self._lock:
            self._deploy_started = time.monotonic()

    def _on_deployed(self, fields: dict) -> None:
        with self._lock:
            started, self._deploy_started = self._deploy_started, None
        self._count(DEPLOYMENTS)
        if started is not None:
            self.metrics.of(DEPLOYMENT_DURATION).observe(time.monotonic() - started)
        if self.metrics.mode == "server" and fields.get("previous_version"):
            self._count(SERVER_RESTARTS, reason="deploy")

    def _on_deploy_failed(self, fields: dict) -> None:
        """A cycle failed: a deployment error only if a deploy was under way (else the poll's failure counted)."""
        with self._lock:
            started, self._deploy_started = self._deploy_started, None
        if started is not None:
            self._count(DEPLOYMENT_ERRORS)

    def _on_rollback(self, fields: dict) -> None:
        self._count(ROLLBACKS)

    def _on_restarted(self, fields: dict) -> None:
        self._count(SERVER_RESTARTS, reason="signal")

    def _on_app_exited(self, fields: dict) -> None:
        self._count(APP_CRASHES)

    _on_replica_restarting = _on_app_exited  # a replica found stopped (crashed or killed) and started again

    def _on_app_healthy(self, fields: dict) -> None:
        self._count(HEALTHCHECKS)

    _on_replica_healthy = _on_app_healthy

    def _on_replica_unhealthy(self, fields: dict) -> None:
        self._count(HEALTHCHECKS)
        self._count(HEALTHCHECK_FAILURES)

    def _on_poll(self, fields: dict) -> None:
        with self._lock:
            self._deploy_started = None  # a new cycle: a deploy that ended without deployed/deploy-failed is over
        result = fields.get("outcome", "ok")
        self._count(POLLS, result=result)
        if result == "error":
            self._count(REGISTRY_ERRORS, kind=fields.get("kind", "other"))

    def _on_github(self, fields: dict) -> None:
        remaining = fields.get("rate_limit_remaining")
        if remaining is not None and str(remaining).isdigit():
            self.metrics.of(GITHUB_RATE_LIMIT).set(int(remaining))

    def _on_proxy_connected(self, fields: dict) -> None:
        port = fields["proxy_port"]
        self._count(PROXY_CONNECTIONS, proxy_port=port)
        self.metrics.of(PROXY_ACTIVE, proxy_port=port).inc()
        self.metrics.of(PROXY_LATENCY, proxy_port=port).observe(fields["latency"])

    def _on_proxy_closed(self, fields: dict) -> None:
        port = fields["proxy_port"]
        self.metrics.of(PROXY_ACTIVE, proxy_port=port).dec()
        self.metrics.of(PROXY_DURATION, proxy_port=port).observe(fields["duration"])
        self._count(PROXY_BYTES, fields["bytes"], proxy_port=port)

    def _on_proxy_no_backend(self, fields: dict) -> None:
        self._count(PROXY_ERRORS, proxy_port=fields.get("proxy_port", ""))

    def _on_proxy_backends(self, fields: dict) -> None:
        self.metrics.of(PROXY_BACKENDS).set(len(fields.get("backends") or ()))


def attach(metrics: Metrics) -> EventMetrics:
    """Feed ``metrics`` from the dewy logger, debug events included, without changing what is printed."""
    from dewy.log import logger

    for handler in logger.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(logger.level)  # the output keeps its --log-level
    handler = EventMetrics(metrics)
    logger.handlers.insert(0, handler)  # counted before printed: a scrape after a log line sees its event
    logger.setLevel(logging.DEBUG)
    return handler
