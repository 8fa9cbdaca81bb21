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
