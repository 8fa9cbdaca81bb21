"""The prediction log: every appended record is written by close(), size rotation, retention, drops."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mlci.serving.predlog import ACTIVE_FILE, PredictionLog, read_lines


def test_every_record_written_on_close(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="sha256:ab", flush_interval_s=0.01)

    def writer(k: int) -> None:
        for i in range(500):
            log.append(
                f"{k}-{i}",
                1.5,
                1,
                {"x": [float(i)], "c": ["a"]},
                {"label": ["yes"], "p": np.array([[0.25, 0.75]])},
            )

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    records = read_lines(tmp_path)
    assert len(records) == 2000 == log.written
    assert {r["id"] for r in records} == {f"{k}-{i}" for k in range(4) for i in range(500)}
    first = records[0]
    assert first["digest"] == "sha256:ab" and first["model"] == "m" and first["rows"] == 1
    assert first["outputs"]["p"] == [[0.25, 0.75]] and first["inputs"]["c"] == ["a"]


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d")
    log.append("1", 0.0, 2, {"x": np.array([np.nan, 1.0], dtype=np.float32)}, {})
    log.close()
    assert read_lines(tmp_path)[0]["inputs"]["x"] == [None, 1.0]


def test_rotation_by_size_keeps_every_line(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=2_000, flush_interval_s=0.01)
    for i in range(300):
        log.append(str(i), 0.0, 1, {"x": [i]}, {})
        if i % 50 == 0:
            log.flush()
    log.close()
    rotated = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert len(rotated) >= 5
    assert all(p.stat().st_size <= 2_000 for p in [*rotated, tmp_path / ACTIVE_FILE])
    assert [r["id"] for r in read_lines(tmp_path)] == [str(i) for i in range(300)]


def test_keep_limits_rotated_files(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=500, keep=2)
    for i in range(200):
        log.append(str(i), 0.0, 1, {"x": [i]}, {})
        log.flush()
    log.close()
    assert len(list(tmp_path.glob("predictions-*.jsonl"))) == 2


def test_full_queue_and_closed_log_drop_and_count(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(
        tmp_path, model="m", digest="d", max_pending=3, flush_interval_s=60, on_drop=dropped.append
    )
    results = [log.append(str(i), 0.0, 1, {}, {}) for i in range(5)]
    assert results == [True, True, True, False, False]
    log.close()
    assert log.append("late", 0.0, 1, {}, {}) is False
    assert log.dropped == 3 and sum(dropped) == 3
    assert len(read_lines(tmp_path)) == 3
