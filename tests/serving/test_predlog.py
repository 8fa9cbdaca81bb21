"""The prediction log: packed arrays, blob files, every appended record written by close(), rotation,
retention and recycling, restarts, write failures, drops."""

from __future__ import annotations

import errno
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.serving.predlog import (
    ACTIVE_FILE,
    BlobReader,
    PredictionLog,
    pack_array,
    pack_labels,
    read_lines,
    unpack_array,
)

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
    """Batches (arrays to the blob file) and single rows (buffered together) interleave; rotation cuts
    between records, and a segment (lines and blob file) holds at most max_bytes unless one record is larger."""
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=200_000, flush_interval_s=60)
    for i in range(40):
        big = np.full((30, 1024), i, dtype=np.float32)  # 120 KiB
        log.append(str(i), 0.0, 1024 if i % 3 == 0 else 1, big if i % 3 == 0 else ONE, {}, {})
        if i % 7 == 0:
            log.flush()
    log.close()
    records = read_lines(tmp_path)
    assert [r["id"] for r in records] == [str(i) for i in range(40)]
    assert [r["rows"] for r in records] == [1024 if i % 3 == 0 else 1 for i in range(40)]
    with BlobReader(tmp_path) as blobs:
        for r in records:
            if r["rows"] == 1024:
                assert (unpack_array(r["numeric"], blobs) == int(r["id"])).all()
    files = [*sorted(tmp_path.glob("predictions-*.jsonl")), tmp_path / ACTIVE_FILE]
    assert len(files) >= 10
    for path in files:
        lines = path.read_bytes().splitlines()
        names = {n for line in lines for n in re.findall(rb'"blob":\["([^"]+)"', line)}
        assert len(names) <= 1  # a segment's lines point into one blob file
        blob_bytes = (tmp_path / names.pop().decode()).stat().st_size - 64 if names else 0
        assert path.stat().st_size + blob_bytes <= 200_000 or len(lines) == 1


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


def test_a_batch_keeps_its_arrays_in_the_blob_file(tmp_path: Path) -> None:
    """A batch's matrix and large outputs go to the blob file as raw bytes, 64-byte aligned; its line stays a
    small JSON line that points at them; small arrays stay inline."""
    rng = np.random.default_rng(2)
    batch = rng.normal(size=(30, 1024)).astype(np.float32)
    batch[3, 7] = np.nan
    odd = rng.normal(size=(1031, 1))  # 8,248 bytes: not a multiple of 64
    log = PredictionLog(tmp_path, model="m", digest="d")
    log.append(
        'quote"and\\backslash', 2.5, 1024, batch, {"c": ["x"] * 1024}, {"p": odd, "q": np.ones((100, 2))}
    )
    log.append("small", 3.0, 1, ONE, {}, {})
    log.close()
    raw = (tmp_path / ACTIVE_FILE).read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n") and len(raw) < 10_000  # 123 KiB of arrays elsewhere
    first, second = read_lines(tmp_path)
    assert first["id"] == 'quote"and\\backslash' and first["rows"] == 1024 and first["ts"] == 2.5
    [blob_file] = tmp_path.glob("predictions-*.bin")
    assert first["outputs"]["p"]["blob"] == [blob_file.name, 64]
    assert first["numeric"]["blob"] == [blob_file.name, 64 + 8256]  # after p, padded to 64 bytes
    assert "b64" in first["outputs"]["q"]  # 1,600 bytes: inline
    assert blob_file.stat().st_size == 64 + 8256 + 30 * 1024 * 4
    assert blob_file.read_bytes()[:64] == b"MLCIBLOB" + blob_file.name.encode().ljust(56)
    with BlobReader(tmp_path) as blobs:
        assert unpack_array(first["numeric"], blobs).tobytes() == batch.tobytes()  # bit for bit, NaN too
        np.testing.assert_array_equal(unpack_array(first["outputs"]["p"], blobs), odd)
        np.testing.assert_array_equal(unpack_array(first["outputs"]["q"], blobs), np.ones((100, 2)))
    assert first["inputs"]["c"] == ["x"] * 1024
    assert second["id"] == "small" and unpack_array(second["numeric"]).shape == (1, 1)
    with pytest.raises(ValueError, match="read it with a BlobReader on the log directory"):
        unpack_array(first["numeric"])


def _batches(log: PredictionLog, start: int, count: int) -> None:
    """``count`` 1024-row records whose matrix is filled with the record's number."""
    for i in range(start, start + count):
        log.append(str(i), 0.0, 1024, np.full((30, 1024), i, dtype=np.float32), {}, {})
        log.flush()


def test_keep_deletes_old_segments_and_recycles_their_blob_files(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=300_000, keep=2)  # two batches a segment
    _batches(log, 0, 14)
    oldest = min(tmp_path.glob("*.bin"))
    os.link(oldest, tmp_path / "observer")  # the same file under a name the log does not touch
    _batches(log, 14, 6)
    log.close()
    rotated = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert len(rotated) == 2
    stems = {p.name[: -len(".jsonl")] for p in rotated}
    bins = {p.name[: -len(".bin")] for p in tmp_path.glob("*.bin")}
    assert stems <= bins and len(bins) == 3  # the kept segments' and the active one's, nothing else
    assert not oldest.exists()
    # the dropped segment's file was not deleted but renamed to a newer segment's and written over
    assert (tmp_path / "observer").read_bytes()[8:64].rstrip().decode() in {f"{b}.bin" for b in bins}
    records = read_lines(tmp_path)
    assert [r["id"] for r in records] == [str(i) for i in range(14, 20)]
    with BlobReader(tmp_path) as blobs:
        for r in records:
            matrix = unpack_array(r["numeric"], blobs)
            assert matrix.shape == (30, 1024) and (matrix == int(r["id"])).all()


def test_a_reader_of_a_dropped_segment_gets_an_error_not_another_records_bytes(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", max_bytes=300_000, keep=1)
    _batches(log, 0, 2)
    first = read_lines(tmp_path)[0]
    with BlobReader(tmp_path) as early, BlobReader(tmp_path) as late:
        np.testing.assert_array_equal(unpack_array(first["numeric"], early), 0)  # opened before the recycling
        _batches(log, 2, 6)  # its segment is dropped and its blob file recycled for a newer one
        with pytest.raises(ValueError, match="was recycled for a newer segment while this record was read"):
            unpack_array(first["numeric"], early)
        with pytest.raises(ValueError, match=r"is not in .*: the server deleted it"):
            unpack_array(first["numeric"], late)
    log.close()


def test_bad_blob_references_are_refused_with_the_reason(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d")
    _batches(log, 0, 1)
    log.close()
    packed = read_lines(tmp_path)[0]["numeric"]
    name, offset = packed["blob"]
    (tmp_path / "predictions-foreign.bin").write_bytes(b"not a blob file" * 100)
    cases = [
        ({"blob": "x"}, "is not [file name, offset]"),
        ({"blob": ["../" + name, offset]}, "is not a log blob file name"),
        ({"blob": [5, offset]}, "is not a log blob file name"),
        ({"blob": [name, 3]}, "is not an integer past the 64-byte header"),
        ({"blob": [name, "64"]}, "is not an integer past the 64-byte header"),
        (
            {"blob": [name, offset + 64]},
            "holds 122816 bytes from offset 128, but the array needs 122880: the file is truncated",
        ),
        ({"shape": [2**40, 30]}, "the file is truncated"),  # never tries to allocate it
        ({"blob": ["predictions-foreign.bin", 64]}, "does not start with its own header"),
        ({"blob": ["predictions-missing.bin", 64]}, "is not in"),
    ]
    with BlobReader(tmp_path) as blobs:
        for change, message in cases:
            with pytest.raises(ValueError, match=re.escape(message)):
                unpack_array({**packed, **change}, blobs)
        assert unpack_array(packed, blobs).shape == (30, 1024)  # the good reference still reads


def test_a_restart_rotates_the_previous_segment_with_its_blob_file(tmp_path: Path) -> None:
    first = PredictionLog(tmp_path, model="m", digest="d")
    _batches(first, 0, 2)
    first.close()
    [old_bin] = tmp_path.glob("*.bin")
    second = PredictionLog(tmp_path, model="m", digest="d", max_bytes=300_000, keep=1)
    assert not (tmp_path / ACTIVE_FILE).stat().st_size  # a new segment
    assert (tmp_path / old_bin.name.replace(".bin", ".jsonl")).is_file()  # the old one, paired by name
    _batches(second, 2, 1)
    with BlobReader(tmp_path) as blobs:
        assert [int(unpack_array(r["numeric"], blobs)[0, 0]) for r in read_lines(tmp_path)] == [0, 1, 2]
    _batches(second, 3, 4)  # past keep: the old segment goes, its lines and its blob file together
    second.close()
    assert not old_bin.exists() and not (tmp_path / old_bin.name.replace(".bin", ".jsonl")).exists()
    with BlobReader(tmp_path) as blobs:
        assert [int(unpack_array(r["numeric"], blobs)[0, 0]) for r in read_lines(tmp_path)] == [4, 5, 6]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ACTIVE_FILE).touch()
    PredictionLog(empty, model="m", digest="d").close()
    assert sorted(p.name for p in empty.iterdir()) == [ACTIVE_FILE]  # an empty leftover is simply continued


def test_a_failed_blob_write_loses_its_lines_and_what_follows_stays_right(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", digest="d", flush_interval_s=60)
    full = tmp_path / f"{log._stem}.bin"
    full.symlink_to("/dev/full")  # the segment's blob file is a device whose every write fails: ENOSPC
    log.append("lost", 0.0, 1024, np.full((30, 1024), 7, dtype=np.float32), {}, {})
    with pytest.raises(OSError) as failed:
        log.flush()
    assert failed.value.errno == errno.ENOSPC
    full.unlink()  # room again: the next blobs land at their planned offsets in a new file
    _batches(log, 1, 2)
    log.close()
    records = read_lines(tmp_path)
    assert [r["id"] for r in records] == ["1", "2"] and log.written == 2
    with BlobReader(tmp_path) as blobs:
        assert [int(unpack_array(r["numeric"], blobs)[0, 0]) for r in records] == [1, 2]


def test_write_all_resumes_after_short_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mlci.serving import predlog

    real, real_at = os.writev, os.pwritev

    def at_most_five_bytes(fd: int, buffers: list[memoryview]) -> int:
        return real(fd, [bytes(b"".join(bytes(b) for b in buffers)[:5])])

    def at_most_five_bytes_at(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_at(fd, [bytes(b"".join(bytes(b) for b in buffers)[:5])], offset)

    monkeypatch.setattr(predlog.os, "writev", at_most_five_bytes)
    monkeypatch.setattr(predlog.os, "pwritev", at_most_five_bytes_at)
    path = tmp_path / "out"
    pieces = [b"abc", b"", bytearray(b"defghij"), memoryview(b"k" * 12)]
    with path.open("wb", buffering=0) as f:
        predlog._write_all(f.fileno(), pieces)
        predlog._write_all(f.fileno(), pieces, 30)
    assert path.read_bytes() == b"abcdefghij" + b"k" * 12 + b"\0" * 8 + b"abcdefghij" + b"k" * 12
    monkeypatch.delattr(predlog.os, "pwritev")  # as on macOS before Python 3.12: seek, then writev
    with path.open("r+b", buffering=0) as f:
        predlog._write_all(f.fileno(), [b"XY", b"Z" * 7], 3)
    assert path.read_bytes() == b"abcXYZZZZZZZ" + b"k" * 10 + b"\0" * 8 + b"abcdefghij" + b"k" * 12


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
    """Batches are ~120 KiB a record: a record count alone would let a slow disk fill the memory."""
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
    assert results == [True, True, True, False]  # three records of 120 KiB fit in 400 KB, the next is dropped
    assert sum(dropped) == 1 and log.dropped == 1
    log.flush()  # the disk caught up: there is room again
    assert log.append("later", 0.0, 1024, big, {}, {}) is True
    log.close()
    assert [r["id"] for r in read_lines(tmp_path)] == ["0", "1", "2", "later"]


_STEP = st.one_of(
    st.tuples(st.just("append"), st.sampled_from([1, 40, 200, 1024])),
    st.tuples(st.just("flush"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(_STEP, min_size=1, max_size=40),
    max_bytes=st.sampled_from([20_000, 150_000, 400_000, 64 << 20]),
    keep=st.sampled_from([0, 1, 3]),
)
def test_any_mix_of_batches_rotations_and_restarts_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]], max_bytes: int, keep: int
) -> None:
    """Whatever the sizes, flushes, rotations, recycling and restarts: the records on disk are every record
    appended (all of them without keep, the newest ones with it), in order, each array bit for bit."""
    directory = tmp_path_factory.mktemp("log")

    def open_log() -> PredictionLog:
        return PredictionLog(
            directory, model="m", digest="d", max_bytes=max_bytes, keep=keep, flush_interval_s=60
        )

    log = open_log()
    appended: list[int] = []
    for kind, rows in steps:
        if kind == "append":
            n = len(appended)
            numeric = np.full((30, rows), n, dtype=np.float32)
            numeric[n % 30, 0] = np.nan
            probabilities = np.full((rows, 2), n / 7, dtype=np.float32)
            assert log.append(str(n), float(n), rows, numeric, {}, {"probabilities": probabilities})
            appended.append(rows)
        elif kind == "flush":
            log.flush()
        else:
            log.close()
            log = open_log()
    log.close()
    records = read_lines(directory)
    ids = [int(r["id"]) for r in records]
    if keep == 0:
        assert ids == list(range(len(appended)))
    else:
        assert ids == list(range(len(appended) - len(ids), len(appended)))  # the newest, none missing
        assert len(list(directory.glob("predictions-*.jsonl"))) <= keep
    with BlobReader(directory) as blobs:
        for r in records:
            n, rows = int(r["id"]), appended[int(r["id"])]
            matrix = unpack_array(r["numeric"], blobs)
            want = np.full((30, rows), n, dtype=np.float32)
            want[n % 30, 0] = np.nan
            assert matrix.tobytes() == want.tobytes() and r["rows"] == rows
            probabilities = r["outputs"]["probabilities"]
            got = (
                unpack_array(probabilities, blobs)
                if isinstance(probabilities, dict)
                else np.array(probabilities)
            )
            np.testing.assert_array_equal(got, np.full((rows, 2), n / 7, dtype=np.float32))
