"""Prometheus text for a report: HELP/TYPE lines, labels escaped, one sample per feature and status."""

from __future__ import annotations

from mlci.monitor.metrics import prometheus_text


def test_report_as_prometheus_text() -> None:
    report = {
        "model": 'odd"name',
        "duration_s": 1.5,
        "windows": [{
            "drift": {"tests": [
                {"name": "a", "kind": "distribution", "psi": 0.3, "drifted": True},
                {"name": "a", "kind": "missing", "psi": None, "drifted": False},
                {"name": "b", "kind": "distribution", "psi": 0.01, "drifted": False},
            ]},
            "outliers": {"rate": 0.2},
        }],
        "performance": {"metrics": {"accuracy": 0.9}},
        "policy": {"drift": {"state": "firing"}, "decay": {"state": "ok"}},
    }  # fmt: skip
    alerts = [{"status": "pending"}, {"status": "dead"}, {"status": "pending"}]
    text = prometheus_text(report, 1234, alerts)
    lines = text.splitlines()
    assert "# TYPE mlci_monitor_rows_total counter" in lines
    assert 'mlci_monitor_rows_total{model="odd\\"name"} 1234.0' in lines
    assert 'mlci_monitor_feature_psi{model="odd\\"name",feature="a"} 0.3' in lines
    assert 'mlci_monitor_feature_drift{model="odd\\"name",feature="b"} 0.0' in lines
    assert (
        sum(line.startswith("mlci_monitor_feature_psi{") for line in lines) == 2
    )  # missing-rate tests have no PSI
    assert 'mlci_monitor_condition_firing{model="odd\\"name",condition="drift"} 1.0' in lines
    assert 'mlci_monitor_alerts{model="odd\\"name",status="pending"} 2.0' in lines
    assert 'mlci_monitor_metric{model="odd\\"name",metric="accuracy"} 0.9' in lines
    assert text.endswith("\n")
