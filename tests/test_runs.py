"""Run records and their per-stage statistics."""

from __future__ import annotations

from pathlib import Path

from mlci.runs import append_run, read_runs, stage_stats


def test_append_read_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    for duration, status, hit in [(1.0, "ok", False), (3.0, "ok", False), (0.0, "ok", True), (2.0, "failed", False)]:
        append_run(path, {"run_id": str(duration), "stages": [{"stage": "train", "status": status, "duration_s": duration, "cache_hit": hit}]})
    with path.open("a") as fh:
        fh.write('{"truncated": \n')  # a crash mid-write must not hide the other records
    runs = read_runs(path)
    assert len(runs) == 4
    stats = stage_stats(runs)["train"]
    assert stats["count"] == 4
    assert stats["failure_rate"] == 0.25 and stats["cache_hit_rate"] == 0.25
    assert stats["p50_s"] == 2.0  # median of the executed, successful durations 1.0 and 3.0


def test_no_file_means_no_runs(tmp_path: Path) -> None:
    assert read_runs(tmp_path / "absent.jsonl") == []
    assert stage_stats([]) == {}


def test_prometheus_text_exposes_the_pipeline_health(tmp_path: Path) -> None:
    from mlci.runs import prometheus_text

    path = tmp_path / "runs.jsonl"
    append_run(path, {"status": "ok", "duration_s": 4.5, "stages": [{"stage": "train", "status": "ok", "duration_s": 2.0, "cache_hit": False}]})
    append_run(path, {"status": "failed", "duration_s": 0.5, "stages": [{"stage": "train", "status": "failed", "duration_s": 0.5, "cache_hit": False}]})
    text = prometheus_text(read_runs(path), 'bc"1')
    assert 'mlci_pipeline_runs_total{model="bc\\"1",status="ok"} 1' in text
    assert 'mlci_pipeline_runs_total{model="bc\\"1",status="failed"} 1' in text
    assert 'mlci_stage_failure_ratio{model="bc\\"1",stage="train"} 0.5' in text
    assert 'mlci_stage_duration_p50_seconds{model="bc\\"1",stage="train"} 2' in text
    assert 'mlci_pipeline_last_run_duration_seconds{model="bc\\"1"} 0.5' in text
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"mlci_pipeline_runs", "mlci_stage_failure_ratio", "mlci_stage_cache_hit_ratio"} <= names
