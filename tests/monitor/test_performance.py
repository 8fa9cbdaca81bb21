"""Delayed labels joined by request id; decay detected when labels flip, not on the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.performance import evaluate_performance, join_labels, read_labels
from mlci.serving.predlog import unpack_array

from .conftest import Project, predict_records

CLASSES = ["benign", "malignant"]


def labelled(bc: Project, flip: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(true labels, predicted labels) for the holdout; a fraction ``flip`` of the true labels inverted."""
    records = predict_records(bc.artifact, bc.holdout, batch=4)
    truth = bc.truth
    rng = np.random.default_rng(seed)
    flips = rng.random(len(truth)) < flip
    truth = [CLASSES[1 - CLASSES.index(t)] if f else t for t, f in zip(truth, flips, strict=True)]
    labels = {r["id"]: truth[i * 4 : i * 4 + r["rows"]] for i, r in enumerate(records)}
    predictions = {r["id"]: unpack_array(r["outputs"]["label"]).tolist() for r in records}  # as logged
    y_true, y_pred, unmatched = join_labels(labels, predictions)
    assert unmatched == []
    return y_true, y_pred


def baseline(bc: Project) -> dict[str, float]:
    """The baseline the monitor compares with: profile.json plus the manifest's evidence, as the service loads it."""
    from mlci.monitor.service import with_evidence

    manifest = orjson.loads((bc.artifact / "manifest.json").read_bytes())
    return with_evidence(orjson.loads((bc.artifact / "profile.json").read_bytes()), manifest)["baseline_metrics"]


def test_true_labels_show_no_decay(bc: Project) -> None:
    y_true, y_pred = labelled(bc, 0.0)
    report = evaluate_performance("classification", baseline(bc), y_true, y_pred, classes=CLASSES)
    assert report.status == "ok", report.message
    assert report.metrics["accuracy"] == pytest.approx(baseline(bc)["accuracy"], abs=0.01)
    assert report.metrics["f1"] == pytest.approx(baseline(bc)["f1"], abs=0.02)


def test_flipped_labels_are_decay(bc: Project) -> None:
    y_true, y_pred = labelled(bc, 0.3)
    report = evaluate_performance("classification", baseline(bc), y_true, y_pred, classes=CLASSES)
    assert report.status == "decay", report.message
    assert report.p_value is not None and report.p_value < 1e-6
    assert report.metrics["accuracy"] < 0.8 and report.interval is not None and report.interval[1] < 0.9


def test_too_few_labels_get_no_verdict(bc: Project) -> None:
    y_true, y_pred = labelled(bc, 0.5)
    report = evaluate_performance("classification", baseline(bc), y_true[:20], y_pred[:20])
    assert report.status == "insufficient" and report.message == "need ≥ 50 labelled rows, got 20"


def test_regression_decay_uses_a_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0, 5, 500)
    good = y + rng.normal(0, 1.0, 500)
    bad = y + rng.normal(0, 1.6, 500)
    ok = evaluate_performance("regression", {"rmse": 1.0, "mae": 0.8}, y, good)
    assert ok.status == "ok" and ok.interval is not None and ok.interval[0] < 1.0 < ok.interval[1] + 0.1
    decayed = evaluate_performance("regression", {"rmse": 1.0, "mae": 0.8}, y, bad)
    assert decayed.status == "decay" and decayed.interval is not None and decayed.interval[0] > 1.05


def test_labels_are_read_incrementally_from_json_lines_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_bytes(b'{"id": "a", "labels": ["x"]}\n{"id": "b", "labels": ["y", "z"]}\n{"id": "c", "lab')
    first = read_labels(jsonl)
    assert first.labels == {"a": ["x"], "b": ["y", "z"]} and first.line == 3  # the incomplete last line waits
    with jsonl.open("ab") as f:
        f.write(b'els": ["w"]}\n')
    second = read_labels(jsonl, first.offset, first.line)
    assert (
        second.labels == {"c": ["w"]} and second.lines == {"c": 3} and second.offset == jsonl.stat().st_size
    )
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,row,label\nr1,1,b\nr1,0,a\nr2,,c\n")
    got = read_labels(csv_path)
    assert got.labels == {"r1": ["a", "b"], "r2": ["c"]} and got.bad == []
    with csv_path.open("a") as f:
        f.write("r3,0,d\n")
    again = read_labels(csv_path, got.offset, got.line)
    assert again.labels == {"r3": ["d"]} and again.lines == {"r3": 5}


def test_bad_labels_lines_are_returned_with_their_numbers_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "labels": ["x"]}\n{"id": "b"}\n')
    got = read_labels(path)
    assert got.labels == {"a": ["x"]}
    [bad] = got.bad
    assert bad.line == 2 and bad.text == '{"id": "b"}' and "line 2 must be" in bad.reason
    with pytest.raises(MonitorError, match="does not exist"):
        read_labels(tmp_path / "nope.jsonl")
    headless = tmp_path / "labels.csv"
    headless.write_text("request,truth\nr,1\n")
    with pytest.raises(MonitorError, match="needs a header with 'id' and 'label'"):
        read_labels(headless)  # the whole file is unusable: that is an error, not a bad line
    with pytest.raises(MonitorError, match="1 predicted row\\(s\\) but 2 label\\(s\\)"):
        join_labels({"a": ["x", "y"]}, {"a": ["x"]})
    seen: list[tuple[str, str]] = []
    assert join_labels({"a": ["x", "y"], "b": ["z"]}, {"a": ["x"], "b": ["z"]}, on_mismatch=lambda i, r: seen.append((i, r))) == (
        ["z"], ["z"], []
    )  # fmt: skip
    assert seen == [("a", "request 'a' has 1 predicted row(s) but 2 label(s)")]
