"""The prediction log: packed arrays, every appended record written by close(), rotation, retention, drops."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlci.serving.predlog import ACTIVE_FILE, PredictionLog, pack_array, pack_labels, read_lines, unpack_array

ONE = np.zeros((1, 1), dtype=np.float32)


def test_every_record_written_on_close(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="sha256:ab", flush_interval_s=0.01)

    def writer(k: int) -> None:
        for i in range(500):
            log.append(
                f"{k}-{i}",
                1.5,
                1,
                np.array([[float(i)]], dtype=np.float32),
                {"c": ["a"]},
                {"label": np.array(["yes"], dtype=object), "p": np.array([[0.25, 0.75]])},
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
    assert first["inputs"] == {"c": ["a"]} and first["outputs"]["label"] == ["yes"]
    assert first["outputs"]["p"] == [[0.25, 0.75]]  # a single row's outputs stay plain JSON
    assert sorted(unpack_array(r["numeric"])[0, 0] for r in records) == sorted(
        [float(i) for i in range(500)] * 4
    )


def test_numeric_matrix_round_trips_exactly_nan_included(tmp_path: Path) -> None:
    matrix = np.array([[np.nan, 1.5], [3.4e38, -0.0]], dtype=np.float32)
    log = PredictionLog(tmp_path, model="m", digest="d")
    values = np.full((100, 1), 2.5)
    values[1] = np.nan
    log.append("1", 0.0, 2, matrix, {}, {"value": values})
    log.close()
    [record] = read_lines(tmp_path)
    assert record["numeric"]["dtype"] == "<f4" and record["numeric"]["shape"] == [2, 2]
    got = unpack_array(record["numeric"])
    assert got.dtype == np.float32 and got.tobytes() == matrix.tobytes()  # bit for bit, -0.0 and NaN too
    np.testing.assert_array_equal(unpack_array(record["outputs"]["value"]), values)  # 100 values: packed


def test_a_model_without_numeric_features_writes_no_matrix(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d")
    log.append("1", 0.0, 1, None, {"color": ["red"]}, {"label": np.array([["no"]], dtype=object)})
    log.close()
    [record] = read_lines(tmp_path)
    assert "numeric" not in record and record["inputs"] == {"color": ["red"]}
    assert record["outputs"]["label"] == [["no"]]  # strings keep the tensor shape


@pytest.mark.parametrize(
    ("packed", "message"),
    [
        ([1, 2], "expected a packed array"),
        ({"dtype": "<f4", "shape": [1]}, "expected a packed array"),
        ({"dtype": "|O", "shape": [1], "b64": "AAAAAA=="}, "not a numeric dtype"),
        ({"dtype": "nonsense", "shape": [1], "b64": "AAAAAA=="}, "not a numeric dtype"),
        ({"dtype": 4, "shape": [1], "b64": "AAAAAA=="}, "not a numeric dtype"),
        ({"dtype": "<f4", "shape": [-1], "b64": "AAAAAA=="}, "not a list of non-negative integers"),
        ({"dtype": "<f4", "shape": "1", "b64": "AAAAAA=="}, "not a list of non-negative integers"),
        ({"dtype": "<f4", "shape": [1], "b64": "AA*AAA=="}, "not base64"),
        (
            {"dtype": "<f4", "shape": [2], "b64": "AAAAAA=="},
            "holds 4 bytes, but dtype <f4 and shape [2] need 8",
        ),
        ({"dtype": "<f4", "shape": [2**62, 4], "b64": ""}, "holds 0 bytes"),  # no int64 overflow
    ],
)
def test_malformed_packed_arrays_are_refused_with_the_reason(packed: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        unpack_array(packed)


def test_pack_array_takes_any_layout() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    np.testing.assert_array_equal(unpack_array(pack_array(fortran)), fortran)
    np.testing.assert_array_equal(unpack_array(pack_array(fortran[:, 1])), [1.0, 4.0])


def test_rotation_by_size_keeps_every_line(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=2_000, flush_interval_s=0.01)
    for i in range(300):
        log.append(str(i), 0.0, 1, ONE, {}, {})
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
        log.append(str(i), 0.0, 1, ONE, {}, {})
        log.flush()
    log.close()
    assert len(list(tmp_path.glob("predictions-*.jsonl"))) == 2


def test_full_queue_and_closed_log_drop_and_count(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(
        tmp_path, model="m", digest="d", max_pending=3, flush_interval_s=60, on_drop=dropped.append
    )
    results = [log.append(str(i), 0.0, 1, ONE, {}, {}) for i in range(5)]
    assert results == [True, True, True, False, False]
    log.close()
    assert log.append("late", 0.0, 1, ONE, {}, {}) is False
    assert log.dropped == 3 and sum(dropped) == 3
    assert len(read_lines(tmp_path)) == 3


def test_large_and_small_lines_keep_their_order_across_rotations(tmp_path: Path) -> None:
    """Batches (queued as they are) and single rows (buffered together) interleave; rotation cuts between lines."""
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=200_000, flush_interval_s=60)
    big = np.zeros((30, 1024), dtype=np.float32)  # a ~164 KB line
    for i in range(40):
        log.append(str(i), 0.0, 1024 if i % 3 == 0 else 1, big if i % 3 == 0 else ONE, {}, {})
        if i % 7 == 0:
            log.flush()
    log.close()
    records = read_lines(tmp_path)
    assert [r["id"] for r in records] == [str(i) for i in range(40)]
    assert [r["rows"] for r in records] == [1024 if i % 3 == 0 else 1 for i in range(40)]
    files = [*sorted(tmp_path.glob("predictions-*.jsonl")), tmp_path / ACTIVE_FILE]
    assert len(files) >= 10
    for path in files:
        lines = path.read_bytes().splitlines()
        # a file holds at most max_bytes, unless a single line alone is larger
        assert path.stat().st_size <= 200_000 or len(lines) == 1


def test_a_heavy_stream_is_written_before_the_tick(tmp_path: Path) -> None:
    written: list[int] = []
    log = PredictionLog(tmp_path, model="m", digest="d", flush_interval_s=60, on_write=written.append)
    big = np.zeros((30, 1024), dtype=np.float32)
    for i in range(40):  # ~6.5 MB queued: past the wake threshold long before the 60 s tick
        log.append(str(i), 0.0, 1024, big, {}, {})
    for _ in range(200):
        if sum(written):
            break
        threading.Event().wait(0.01)
    assert sum(written) > 0
    log.close()
    assert len(read_lines(tmp_path)) == 40


def test_a_batch_line_is_one_valid_json_line_with_the_matrix(tmp_path: Path) -> None:
    """A batch's base64 is written between the two halves of its line: the result must still be one JSON line."""
    rng = np.random.default_rng(2)
    batch = rng.normal(size=(30, 1024)).astype(np.float32)
    batch[3, 7] = np.nan
    log = PredictionLog(tmp_path, model="m", digest="d")
    log.append('quote"and\\backslash', 2.5, 1024, batch, {"c": ["x"] * 1024}, {"p": np.ones((1024, 2))})
    log.append("small", 3.0, 1, ONE, {}, {})
    log.close()
    raw = (tmp_path / ACTIVE_FILE).read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    first, second = read_lines(tmp_path)
    assert first["id"] == 'quote"and\\backslash' and first["rows"] == 1024 and first["ts"] == 2.5
    assert unpack_array(first["numeric"]).tobytes() == batch.tobytes()
    assert first["inputs"]["c"] == ["x"] * 1024 and unpack_array(first["outputs"]["p"]).shape == (1024, 2)
    assert second["id"] == "small" and unpack_array(second["numeric"]).shape == (1, 1)


def test_write_all_resumes_after_short_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mlci.serving import predlog

    real = os.writev

    def at_most_five_bytes(fd: int, buffers: list[memoryview]) -> int:
        return real(fd, [bytes(b"".join(bytes(b) for b in buffers)[:5])])

    monkeypatch.setattr(predlog.os, "writev", at_most_five_bytes)
    path = tmp_path / "out"
    with path.open("wb", buffering=0) as f:
        predlog._write_all(f.fileno(), [b"abc", b"", bytearray(b"defghij"), b"k" * 12])
    assert path.read_bytes() == b"abcdefghij" + b"k" * 12


def test_labels_are_logged_as_indices_and_read_back_as_names(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d")
    index = np.array([1, 0, 2, 2] * 25, dtype=np.int64)
    strings = np.array(["b", "a", "c", "c"] * 25, dtype=object)
    labels = {"label": (("a", "b", "c"), index)}
    log.append("1", 0.0, 100, ONE, {}, {"label": strings}, labels)
    log.append("2", 0.0, 4, ONE, {}, {"label": strings[:4]}, {"label": (("a", "b", "c"), index[:4])})
    log.close()
    batch, few = read_lines(tmp_path)
    packed = batch["outputs"]["label"]
    assert packed["classes"] == ["a", "b", "c"] and packed["dtype"] == "|u1"
    assert unpack_array(packed).tolist() == ["b", "a", "c", "c"] * 25
    assert few["outputs"]["label"] == ["b", "a", "c", "c"]  # a few rows: the names as plain JSON
    wide = pack_labels([f"c{i}" for i in range(300)], np.array([299, 0]))
    assert wide["dtype"] == "<u2" and unpack_array(wide).tolist() == ["c299", "c0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": ["a", 2]}, "classes must be a list of strings"),
        ({"classes": "ab"}, "classes must be a list of strings"),
        ({"classes": ["a"]}, "index 0..1 is outside the 1 classes"),
        ({"dtype": "|b1"}, "must be integer indices"),
    ],
)
def test_malformed_packed_labels_are_refused(change: dict[str, Any], message: str) -> None:
    packed = {**pack_labels(["a", "b"], np.array([0, 1])), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        unpack_array(packed)


def test_queued_bytes_are_bounded_when_the_disk_cannot_keep_up(tmp_path: Path) -> None:
    """Batches are ~164 KB a line: a record count alone would let a slow disk fill the memory."""
    dropped: list[int] = []
    log = PredictionLog(
        tmp_path,
        model="m",
        digest="d",
        max_pending_bytes=400_000,
        flush_interval_s=60,
        on_drop=dropped.append,
    )
    big = np.zeros((30, 1024), dtype=np.float32)
    results = [log.append(str(i), 0.0, 1024, big, {}, {}) for i in range(4)]
    assert results == [True, True, False, False]  # two lines fit in 400 KB, the next ones are dropped
    assert sum(dropped) == 2 and log.dropped == 2
    log.flush()  # the disk caught up: there is room again
    assert log.append("later", 0.0, 1024, big, {}, {}) is True
    log.close()
    assert [r["id"] for r in read_lines(tmp_path)] == ["0", "1", "later"]
