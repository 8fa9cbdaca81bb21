"""Metrics: own registry per server, digest label everywhere, per-class counts, readiness gauge."""

from __future__ import annotations

import numpy as np

from mlci.serving.metrics import ServingMetrics


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_counts_latency_batches_classes() -> None:
    m = ServingMetrics(model="m", digest="sha256:ab")
    m.request("infer", 200, 0.002)
    m.request("infer", 200, 0.004)
    m.request("infer", 422)
    m.inference(1, np.array(["yes"], dtype=object))
    m.inference(3, np.array(["no", "yes", "no"], dtype=object))
    m.set_ready(True)
    m.limit("header_timeout")
    m.limit("header_timeout")
    m.limit("max_connections")
    text = m.render().decode()
    assert sample(text, "mlci_requests_total", status="200", endpoint="infer", digest="sha256:ab") == 2
    assert sample(text, "mlci_requests_total", status="422") == 1
    assert sample(text, "mlci_request_duration_seconds_count", endpoint="infer") == 2
    assert sample(text, "mlci_predictions_total", **{"class": "yes"}) == 2
    assert sample(text, "mlci_predictions_total", **{"class": "no"}) == 2
    assert sample(text, "mlci_batch_rows_sum") == 4
    assert sample(text, "mlci_model_ready", model="m") == 1
    assert sample(text, "mlci_limit_events_total", limit="header_timeout", digest="sha256:ab") == 2
    assert sample(text, "mlci_limit_events_total", limit="max_connections") == 1


def test_regression_and_separate_registries() -> None:
    a = ServingMetrics(model="m", digest="d1")
    b = ServingMetrics(model="m", digest="d2")
    a.inference(5, None)
    assert sample(a.render().decode(), "mlci_predictions_total", **{"class": "all"}) == 5
    assert "mlci_predictions_total{" not in b.render().decode()
