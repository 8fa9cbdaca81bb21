"""The last cycle's report in Prometheus text exposition format (for node_exporter's textfile collector)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["prometheus_text"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_FAILURE_KINDS = ("failed", "rejected", "redirect", "gone", "unreachable", "timeout")


def prometheus_text(
    report: Mapping[str, Any] | None,
    rows_total: int,
    alerts: list[dict[str, Any]],
    counters: Mapping[str, Any] | None = None,
    model_name: str | None = None,
) -> str:
    """The last report as Prometheus text exposition format, with the monitor's error ``counters``
    (``cycle_errors``, ``labels_quarantined``, ``outbox_quarantined``, ``delivery_failures`` by kind). Without
    a report (every cycle so far failed) only the counters and the outbox are written, labelled with
    ``model_name``."""
    model = _label(str(report["model"] if report is not None else model_name))
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{model=\"{model}\"{extra}}} {value!r}" for extra, value in samples)

    counters = counters or {}
    failures = counters.get("delivery_failures", {})
    metric("mlci_monitor_cycle_errors_total", "counter", "Monitoring cycles that failed with an error.",
           [("", float(counters.get("cycle_errors", 0)))])  # fmt: skip
    metric("mlci_monitor_labels_quarantined_total", "counter", "Labels lines quarantined as unusable.",
           [("", float(counters.get("labels_quarantined", 0)))])  # fmt: skip
    metric("mlci_monitor_outbox_quarantined", "gauge", "Outbox files set aside as unusable (kept as *.bad).",
           [("", float(counters.get("outbox_quarantined", 0)))])  # fmt: skip
    metric("mlci_monitor_alert_delivery_failures_total", "counter", "Alert delivery attempts that failed, by reason.",
           [(f',reason="{k}"', float(failures.get(k, 0))) for k in _FAILURE_KINDS])  # fmt: skip
    _alert_counts(metric, alerts)
    if report is None:
        return "\n".join(out) + "\n"
    metric("mlci_monitor_rows_total", "counter", "Rows judged by the monitor.", [("", float(rows_total))])
    metric("mlci_monitor_synthetic_rows_total", "counter", "Synthetic rows (smoke tests, checks) left out.",
           [("", float(report.get("synthetic_rows_total", 0)))])  # fmt: skip
    metric("mlci_monitor_cycle_seconds", "gauge", "Duration of the last cycle.", [("", float(report.get("duration_s", 0.0)))])
    windows = report["windows"]
    if windows:
        last = windows[-1]
        tests = [t for t in last["drift"]["tests"] if t["kind"] == "distribution" and t["psi"] is not None]
        metric("mlci_monitor_feature_psi", "gauge", "PSI of each feature in the last window.",
               [(f',feature="{_label(t["name"])}"', float(t["psi"])) for t in tests])  # fmt: skip
        metric("mlci_monitor_feature_drift", "gauge", "1 if the feature drifted in the last window.",
               [(f',feature="{_label(t["name"])}"', float(t["drifted"])) for t in tests])  # fmt: skip
        metric("mlci_monitor_outlier_rate", "gauge", "Outlier rate of the last window.", [("", float(last["outliers"]["rate"]))])
    performance = report.get("performance")
    if performance and performance.get("metrics"):
        metric("mlci_monitor_metric", "gauge", "Model metric on the labelled rows.",
               [(f',metric="{k}"', float(v)) for k, v in performance["metrics"].items()])  # fmt: skip
    metric("mlci_monitor_condition_firing", "gauge", "1 while a policy condition is firing.",
           [(f',condition="{c}"', float(v["state"] == "firing")) for c, v in report["policy"].items()])  # fmt: skip
    return "\n".join(out) + "\n"


def _alert_counts(metric: Any, alerts: list[dict[str, Any]]) -> None:
    """The outbox's alerts by status."""
    counts = {s: 0 for s in ("pending", "delivered", "dead")}
    for alert in alerts:
        counts[alert["status"]] = counts.get(alert["status"], 0) + 1
    metric("mlci_monitor_alerts", "gauge", "Alerts in the outbox by status.", [(f',status="{k}"', float(v)) for k, v in counts.items()])
