"""Prometheus metrics of one server: plain counters on the request path, exported by a collector on scrape.

Counting is integer additions on the event-loop thread (which is also where ``/metrics`` is rendered),
so the request path takes no lock and builds no label objects; ``prometheus_client`` turns the counts
into the text format only when scraped. Every series carries the model digest as a label, so a
dashboard can tell versions apart across a rollout. Each server has its own registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServingMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)


class _Histogram:
    """Bucket counts (non-cumulative until exported), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def export(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return buckets, self.sum


class ServingMetrics(Collector):
    """Request counts by endpoint and status, latency, batch sizes, predictions per class, synthetic rows,
    log health, limits hit, readiness."""

    def __init__(self, *, model: str, digest: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.digest = digest
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch = _Histogram(BATCH_BUCKETS)
        self.onnxruntime_rows = _Histogram(BATCH_BUCKETS)
        self.predictions: dict[str, int] = {}
        self.synthetic_rows = 0  # rows of requests marked X-MLCI-Traffic: synthetic (not in predictions)
        self.log_lines = 0
        self.log_dropped = 0
        self.limits: dict[str, int] = {}
        self.ready = 0
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        """Count one request; observe its latency when given."""
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            histogram = self.latency.get(endpoint)
            if histogram is None:
                histogram = self.latency[endpoint] = _Histogram(LATENCY_BUCKETS)
            histogram.observe(seconds)

    def inference(
        self, rows: int, labels: np.ndarray | None, per_class: list[tuple[str, int]] | None = None
    ) -> None:
        """Batch size, and rows per predicted class: from ``per_class`` (name, rows) when the caller counted
        them already, else from ``labels`` (None for regression: counted under "all")."""
        self.batch.observe(rows)
        counts = self.predictions
        if per_class is not None:
            for label, count in per_class:
                counts[label] = counts.get(label, 0) + count
        elif labels is None:
            counts["all"] = counts.get("all", 0) + rows
        elif rows == 1:
            label = str(labels.flat[0])
            counts[label] = counts.get(label, 0) + 1
        else:
            # Counter over Python objects beats np.unique (which sorts) on object arrays.
            for value, count in Counter(labels.ravel().tolist()).items():
                label = str(value)
                counts[label] = counts.get(label, 0) + count

    def onnxruntime_call(self, rows: int) -> None:
        """One onnxruntime call of ``rows`` rows (several requests' rows when they were batched together)."""
        self.onnxruntime_rows.observe(rows)

    def limit(self, name: str) -> None:
        """A server limit cut a connection or a request off: header_timeout, body_timeout, max_connections,
        max_buffered_bytes."""
        self.limits[name] = self.limits.get(name, 0) + 1

    def set_ready(self, ready: bool) -> None:
        """Flip the readiness gauge."""
        self.ready = 1 if ready else 0

    def log_written(self, lines: int) -> None:
        """Called by the prediction log's writer thread (the only writer of this count)."""
        self.log_lines += lines

    def log_dropped_records(self, records: int) -> None:
        """Called by the prediction log when it drops records."""
        self.log_dropped += records

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the counts (prometheus_client calls this on scrape)."""
        d = self.digest
        requests = CounterMetricFamily(
            "mlci_requests", "HTTP requests by endpoint and status.", labels=["endpoint", "status", "digest"]
        )
        for (endpoint, status), count in sorted(self.requests.items()):
            requests.add_metric([endpoint, str(status), d], count)
        yield requests
        latency = HistogramMetricFamily(
            "mlci_request_duration_seconds",
            "Time from the request reaching the app to the response being built.",
            labels=["endpoint", "digest"],
        )
        for endpoint, histogram in sorted(self.latency.items()):
            buckets, total = histogram.export()
            latency.add_metric([endpoint, d], buckets, total)
        yield latency
        batch = HistogramMetricFamily(
            "mlci_batch_rows", "Rows per successful inference request.", labels=["digest"]
        )
        buckets, total = self.batch.export()
        batch.add_metric([d], buckets, total)
        yield batch
        calls = HistogramMetricFamily(
            "mlci_onnxruntime_batch_rows",
            "Rows per onnxruntime call; concurrent requests share calls (dynamic batching).",
            labels=["digest"],
        )
        buckets, total = self.onnxruntime_rows.export()
        calls.add_metric([d], buckets, total)
        yield calls
        predictions = CounterMetricFamily(
            "mlci_predictions",
            "Predicted rows by class (classification) or in all (regression).",
            labels=["digest", "class"],
        )
        for label, count in sorted(self.predictions.items()):
            predictions.add_metric([d, label], count)
        yield predictions
        synthetic = CounterMetricFamily(
            "mlci_synthetic_rows",
            "Rows of requests marked synthetic (X-MLCI-Traffic: smoke tests, post-deploy checks); "
            "not in mlci_predictions or mlci_batch_rows.",
            labels=["digest"],
        )
        synthetic.add_metric([d], self.synthetic_rows)
        yield synthetic
        lines = CounterMetricFamily(
            "mlci_prediction_log_lines", "Lines written to the prediction log.", labels=["digest"]
        )
        lines.add_metric([d], self.log_lines)
        yield lines
        dropped = CounterMetricFamily(
            "mlci_prediction_log_dropped",
            "Records dropped because the log queue was full or closed, or the disk refused their write.",
            labels=["digest"],
        )
        dropped.add_metric([d], self.log_dropped)
        yield dropped
        limits = CounterMetricFamily(
            "mlci_limit_events",
            "Connections closed or requests refused by a server limit (timeouts, connection cap, body budget).",
            labels=["limit", "digest"],
        )
        for name, count in sorted(self.limits.items()):
            limits.add_metric([name, d], count)
        yield limits
        ready = GaugeMetricFamily(
            "mlci_model_ready", "1 once the model is loaded and warmed up.", labels=["digest", "model"]
        )
        ready.add_metric([d, self.model], self.ready)
        yield ready

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def describe(self) -> list[Any]:
        """No up-front description: the label sets grow as requests arrive."""
        return []
