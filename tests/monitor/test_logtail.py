"""Reading the prediction log across rotations: no line read twice, none skipped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import orjson

from mlci.monitor.logtail import read_new, start_cursor
from mlci.serving.predlog import PredictionLog


def ids(lines: list[bytes]) -> list[str]:
    return [orjson.loads(line)["id"] for line in lines]


def test_only_new_complete_lines_are_returned(tmp_path: Path) -> None:
    active = tmp_path / "predictions.jsonl"
    active.write_bytes(b'{"id": "1"}\n{"id": "2"}\n{"id": "3"')
    lines, cursor = read_new(tmp_path, start_cursor())
    assert ids(lines) == ["1", "2"]
    with active.open("ab") as f:
        f.write(b'}\n{"id": "4"}\n')
    lines, cursor = read_new(tmp_path, cursor)
    assert ids(lines) == ["3", "4"]
    assert read_new(tmp_path, cursor)[0] == []


def test_rotation_between_reads_loses_and_repeats_nothing(tmp_path: Path) -> None:
    active = tmp_path / "predictions.jsonl"
    active.write_bytes(b'{"id": "1"}\n{"id": "2"}\n')
    lines, cursor = read_new(tmp_path, start_cursor())
    with active.open("ab") as f:
        f.write(b'{"id": "3"}\n')
    rotated = tmp_path / "predictions-20260101T000000000000Z-000001.jsonl"
    active.rename(rotated)  # what PredictionLog._rotate does
    active.write_bytes(b'{"id": "4"}\n')
    lines, cursor = read_new(tmp_path, cursor)
    assert ids(lines) == ["3", "4"]
    os.unlink(rotated)  # deleted by `keep`
    assert read_new(tmp_path, cursor)[1]["done"] == []  # the cursor forgets files that are gone


def test_missing_log_reads_nothing(tmp_path: Path) -> None:
    assert read_new(tmp_path, start_cursor()) == ([], {"inode": None, "offset": 0, "done": []})


def test_concurrent_writer_with_rotation(tmp_path: Path) -> None:
    """The real PredictionLog rotating every few KiB while the reader polls: every id exactly once, in order."""
    log = PredictionLog(tmp_path, model="m", digest="sha256:x", max_bytes=4096, flush_interval_s=0.001)
    total = 3000
    seen: list[str] = []
    label = np.array(["a"], dtype=object)

    def write() -> None:
        try:
            for i in range(total):
                log.append(f"r{i}", 0.0, 1, np.array([[i]], dtype=np.float32), {}, {"label": label})
                if i % 50 == 0:
                    log.flush()
        finally:
            log.close()

    writer = threading.Thread(target=write)
    writer.start()
    cursor = start_cursor()
    while writer.is_alive():  # not an event the writer sets at the end: if it raised, this would spin forever
        lines, cursor = read_new(tmp_path, cursor)
        seen.extend(ids(lines))
    writer.join()
    lines, cursor = read_new(tmp_path, cursor)
    seen.extend(ids(lines))
    assert len(list(tmp_path.glob("predictions-*.jsonl"))) > 10  # it really rotated, many times
    assert seen == [f"r{i}" for i in range(total)]
