"""Run records: one JSON line per `mlci run`, and the statistics `mlci runs` shows."""

from __future__ import annotations

import fcntl
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_run", "prometheus_text", "read_runs", "stage_stats"]


def append_run(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record; an exclusive lock keeps concurrent runs from interleaving lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()


def read_runs(path: Path) -> list[dict[str, Any]]:
    """All records, oldest first; a damaged line (e.g. from a crash mid-write) is skipped, not fatal."""
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            runs.append(record)
    return runs


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stage_stats(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage: executions, failure rate, cache-hit rate, and p50/p95 duration of the stages that ran."""
    seen: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        for stage in run.get("stages", []):
            seen[stage["stage"]].append(stage)
    stats = {}
    for name, records in seen.items():
        executed = [r for r in records if not r.get("cache_hit")]
        durations = [float(r["duration_s"]) for r in executed if r.get("status") == "ok"]
        stats[name] = {
            "count": len(records),
            "failure_rate": sum(r.get("status") == "failed" for r in records) / len(records),
            "cache_hit_rate": sum(bool(r.get("cache_hit")) for r in records) / len(records),
            "p50_s": round(_percentile(durations, 0.5), 4),
            "p95_s": round(_percentile(durations, 0.95), 4),
        }
    return stats


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(runs: Iterable[Mapping[str, Any]], model: str) -> str:
    """The pipeline's own health in the Prometheus text format (for a textfile collector or a push gateway)."""
    records = list(runs)
    stats = stage_stats(records)
    m = _label(model)
    lines = [
        "# HELP mlci_pipeline_runs_total Pipeline runs recorded, by final status.",
        "# TYPE mlci_pipeline_runs_total counter",
    ]
    for status in ("ok", "failed"):
        count = sum(r.get("status") == status for r in records)
        lines.append(f'mlci_pipeline_runs_total{{model="{m}",status="{status}"}} {count}')
    metrics = (
        ("mlci_stage_executions_total", "counter", "Stage executions recorded (cache hits included).", "count"),
        ("mlci_stage_failure_ratio", "gauge", "Share of a stage's executions that failed.", "failure_rate"),
        ("mlci_stage_cache_hit_ratio", "gauge", "Share of a stage's executions served from the stage cache.", "cache_hit_rate"),
        ("mlci_stage_duration_p50_seconds", "gauge", "Median duration of the stage when it ran (not cached).", "p50_s"),
        ("mlci_stage_duration_p95_seconds", "gauge", "95th percentile duration of the stage when it ran.", "p95_s"),
    )
    for name, kind, help_text, key in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{model="{m}",stage="{_label(stage)}"}} {values[key]:g}' for stage, values in stats.items()]
    if records:
        last = records[-1]
        lines += [
            "# HELP mlci_pipeline_last_run_duration_seconds Wall time of the most recent run.",
            "# TYPE mlci_pipeline_last_run_duration_seconds gauge",
            f'mlci_pipeline_last_run_duration_seconds{{model="{m}"}} {float(last.get("duration_s", 0.0)):g}',
        ]
    return "\n".join(lines) + "\n"
