"""``--otlp-endpoint``: the ``--telemetry`` series pushed over OTLP/gRPC every 15 s, as upstream does.

The series live in the Prometheus registry (:mod:`dewy.telemetry.metrics`); each push converts
what it holds into the OpenTelemetry SDK's data model, under upstream's OpenTelemetry names
and units (``dewy.deployment.duration``, ``s``), cumulative, and hands it to the SDK's OTLP
exporter. Imported only with ``--otlp-endpoint``: the SDK and gRPC cost memory.
"""

from __future__ import annotations

import asyncio
import time

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, MetricExportResult, MetricsData,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from dewy import __version__, log
from dewy.telemetry.metrics import Metrics, Series, by_exposed_name

PUSH_INTERVAL = 15.0
EXPORT_TIMEOUT = 10.0
SCOPE = InstrumentationScope("github.com/linyows/dewy", __version__)  # upstream's meter name: same dashboards


class OtlpPush:
    def __init__(self, metrics: Metrics, endpoint: str, insecure: bool) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.exporter = OTLPMetricExporter(endpoint=endpoint, insecure=insecure, timeout=EXPORT_TIMEOUT)
        self.resource = Resource.create({"service.name": "dewy", "service.version": __version__})
        self.started = time.time_ns()
        self.failing = False

    async def run(self) -> None:
        """Push every PUSH_INTERVAL; a collector that is down is one warning line (and one when it is back)."""
        while True:
            await asyncio.sleep(PUSH_INTERVAL)
            await self.push()

    async def push(self) -> bool:
        result = await asyncio.to_thread(self.exporter.export, self.snapshot())
        failing = result is not MetricExportResult.SUCCESS
        if failing != self.failing:
            if failing:
                log.warning("otlp-failed", f"cannot push metrics to {self.endpoint}; retrying every {PUSH_INTERVAL:g}s")
            else:
                log.info("otlp-ok", f"pushing metrics to {self.endpoint} again")
        self.failing = failing
        return not failing

    async def close(self) -> None:
        await asyncio.to_thread(self.exporter.shutdown)

    def snapshot(self) -> MetricsData:
        """What the registry holds now, as OTLP metrics (cumulative since dewy started)."""
        now = time.time_ns()
        known = by_exposed_name()
        metrics = []
        for family in self.metrics.registry.collect():
            series = known.get(family.name)
            if series is not None and family.samples:
                metrics.append(Metric(series.name, series.help, series.unit, self._data(series, family.samples, now)))
        scope = ScopeMetrics(SCOPE, metrics, schema_url="")
        return MetricsData([ResourceMetrics(self.resource, [scope], schema_url="")])

    def _data(self, series: Series, samples, now: int):
        if series.kind == "histogram":
            return Histogram(_histogram_points(samples, self.started, now), AggregationTemporality.CUMULATIVE)
        points = [NumberDataPoint(dict(s.labels), self.started, now, s.value) for s in samples]
        if series.kind == "counter":
            return Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
        return Gauge(points)


def _histogram_points(samples, start: int, now: int) -> list[HistogramDataPoint]:
    """Prometheus buckets are cumulative (``le``); OTLP's are counts per bucket with explicit bounds."""
    by_labels: dict[tuple, dict] = {}
    for s in samples:
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        point = by_labels.setdefault(labels, {"buckets": []})
        if s.name.endswith("_bucket"):
            point["buckets"].append((float(s.labels["le"]), s.value))
        else:
            point[s.name.rsplit("_", 1)[1]] = s.value  # _count, _sum
    points = []
    for labels, point in by_labels.items():
        buckets = sorted(point["buckets"])
        counts = [int(c - (buckets[i - 1][1] if i else 0)) for i, (_, c) in enumerate(buckets)]
        points.append(HistogramDataPoint(dict(labels), start, now, int(point["count"]), point["sum"], counts,
                                         [le for le, _ in buckets[:-1]], min=None, max=None))
    return points
