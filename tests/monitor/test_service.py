"""One monitoring cycle over a real artifact and prediction-log files in the documented format."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.service import Monitor
from mlci.monitor.settings import Settings
from mlci.serving.predlog import PredictionLog, pack_array, read_lines, unpack_array

from .conftest import Project, ReceiverServer, predict_records, shifted, write_log

MOVED = ["mean_radius", "mean_texture", "worst_area"]


def monitor(bc: Project, tmp_path: Path, **kwargs: Any) -> Monitor:
    settings = kwargs.pop("settings", Settings(bad_windows=1, good_windows=1, backoff_s=0.0))
    return Monitor(
        bc.artifact, tmp_path / "log", tmp_path / "state", settings=settings, sleep=lambda _s: None, **kwargs
    )


def test_normal_then_drifted_traffic(bc: Project, tmp_path: Path, webhook: ReceiverServer) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, batch=3, prefix="a"))
    m = monitor(bc, tmp_path, settings=Settings(bad_windows=1, webhook=webhook.receiver.url))
    first = m.cycle()
    assert first["status"] == "ok" and first["rows"] == len(bc.holdout) and first["actions"] == []
    assert (tmp_path / "state" / "report.json").is_file()
    write_log(
        tmp_path / "log",
        predict_records(bc.artifact, shifted(bc.holdout, MOVED, shift_sd=1.5), batch=3, prefix="b"),
    )
    second = m.cycle()
    assert second["status"] == "drift" and second["drifted_features"] == sorted(MOVED)
    assert second["rows"] == len(bc.holdout)  # only the new lines
    drift_actions = [a for a in second["actions"] if a["condition"] == "drift"]
    assert [a["action"] for a in drift_actions] == ["alert", "retrain"]
    retrain = orjson.loads(Path(drift_actions[1]["request"]).read_bytes())
    assert retrain["request"] == "retrain" and retrain["drifted_features"] == sorted(MOVED)
    events = [(body["condition"], body["event"]) for body in webhook.receiver.bodies()]
    assert events[:2] == [("drift", "alert"), ("drift", "retrain_requested")]
    assert set(events[2:]) <= {("outliers", "alert")}  # 1.5 sd shifts also push rows out of range
    assert webhook.receiver.bodies()[0]["drifted_features"] == sorted(MOVED)
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_feature_drift{model="breast-cancer",feature="mean_radius"} 1.0' in metrics
    assert f'mlci_monitor_rows_total{{model="breast-cancer"}} {float(2 * len(bc.holdout))}' in metrics
    assert f'mlci_monitor_alerts{{model="breast-cancer",status="delivered"}} {float(len(events))}' in metrics


def test_too_few_rows_wait_for_the_next_cycle(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout.head(40), prefix="a"))
    m = monitor(bc, tmp_path)
    report = m.cycle()
    assert report["status"] == "insufficient" and report["windows"] == []
    assert report["message"].startswith("need ≥ 100 rows for a verdict, have 40")
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout.iloc[40:120], prefix="b"))
    report = m.cycle()
    assert report["status"] == "ok" and report["rows"] == 120  # the 40 waiting rows were judged too


def test_windows_split_and_restart_reads_nothing_twice(bc: Project, tmp_path: Path) -> None:
    frame = bc.holdout
    write_log(tmp_path / "log", predict_records(bc.artifact, frame, batch=2, prefix="a"))
    settings = Settings(window=100, min_rows=30, bad_windows=1)
    report = monitor(bc, tmp_path, settings=settings).cycle()
    assert [w["rows"] for w in report["windows"]] == [100, len(frame) - 100]
    assert 30 <= len(frame) - 100 < 100  # the holdout makes one full window and a tail
    tail_joins = Settings(window=100, min_rows=len(frame) - 99)
    other = Monitor(bc.artifact, tmp_path / "log", tmp_path / "other-state", settings=tail_joins)
    # a tail below min_rows joins the window before
    assert [w["rows"] for w in other.cycle()["windows"]] == [len(frame)]
    write_log(tmp_path / "log", predict_records(bc.artifact, frame.head(60), batch=2, prefix="b"))
    restarted = monitor(bc, tmp_path, settings=settings).cycle()  # a new process on the same state
    assert restarted["rows"] == 60 and restarted["cycle"] == 2


def test_other_models_and_broken_lines_are_counted_and_skipped(bc: Project, tmp_path: Path) -> None:
    records = predict_records(bc.artifact, bc.holdout, prefix="a")
    other = [{**r, "digest": "sha256:" + "0" * 64} for r in records[:30]]
    wrong_schema = {**records[0], "id": "odd", "numeric": pack_array(np.zeros((29, 1), np.float32))}  # not 30
    write_log(tmp_path / "log", [*other, *records[:50], wrong_schema, *records[50:]])
    with (tmp_path / "log" / "predictions.jsonl").open("ab") as f:
        f.write(b"not json\n")
    report = monitor(bc, tmp_path).cycle()
    assert (
        report["rows"] == len(bc.holdout) and report["skipped_other_model"] == 30 and report["bad_lines"] == 2
    )
    assert gc.isenabled()  # parsing switches the cyclic GC off; the cycle must switch it back on


def test_flipped_labels_trigger_rollback_and_retrain(bc: Project, tmp_path: Path) -> None:
    records = predict_records(bc.artifact, bc.holdout, batch=4, prefix="a")
    write_log(tmp_path / "log", records)
    labels = tmp_path / "labels.jsonl"
    flip = {"benign": "malignant", "malignant": "benign"}
    with labels.open("wb") as f:
        for i, r in enumerate(records):
            truth = bc.truth[i * 4 : i * 4 + r["rows"]]
            f.write(
                orjson.dumps({"id": r["id"], "labels": [flip[t] if (i % 3 == 0) else t for t in truth]})
                + b"\n"
            )
    calls: list[dict[str, Any]] = []

    def rollback(context: dict[str, Any]) -> dict[str, Any]:
        calls.append(context)
        return {"to": "sha256:previous"}

    report = monitor(bc, tmp_path, labels=labels, actions={"rollback": rollback}).cycle()
    assert report["status"] == "decay" and report["performance"]["metrics"]["accuracy"] < 0.75
    assert [a["action"] for a in report["actions"]] == ["alert", "rollback", "retrain"]
    assert calls and calls[0]["condition"] == "decay"
    assert report["actions"][1]["ok"] and report["actions"][1]["result"] == {"to": "sha256:previous"}


def test_labels_before_predictions_wait_and_truth_is_no_decay(bc: Project, tmp_path: Path) -> None:
    records = predict_records(bc.artifact, bc.holdout, batch=4, prefix="a")
    labels = tmp_path / "labels.jsonl"
    (tmp_path / "log").mkdir()
    m = monitor(bc, tmp_path, labels=labels)
    report = m.cycle()  # no labels file yet: not an error
    assert report["performance"]["status"] == "insufficient" and report["performance"]["rows"] == 0
    labels.write_bytes(
        b"".join(
            orjson.dumps({"id": r["id"], "labels": bc.truth[i * 4 : i * 4 + r["rows"]]}) + b"\n"
            for i, r in enumerate(records)
        )
    )
    report = m.cycle()
    performance = report["performance"]
    assert performance["status"] == "insufficient" and performance["waiting_labels"] == len(records)
    write_log(tmp_path / "log", records)
    report = m.cycle()
    assert report["performance"]["status"] == "ok" and report["performance"]["rows"] == len(bc.holdout)
    assert report["performance"]["waiting_labels"] == 0


def test_a_rollback_that_fails_is_reported_not_raised(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, prefix="a"))
    labels = tmp_path / "labels.csv"
    rows = [f"a-{i},{'malignant' if t == 'benign' else 'benign'}" for i, t in enumerate(bc.truth)]
    labels.write_text("id,label\n" + "\n".join(rows) + "\n")

    def broken(_context: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("registry unreachable")

    report = monitor(bc, tmp_path, labels=labels, actions={"rollback": broken}).cycle()
    [rollback] = [a for a in report["actions"] if a["action"] == "rollback"]
    assert rollback["ok"] is False and rollback["error"] == "RuntimeError: registry unreachable"


def test_state_of_another_artifact_is_refused(bc: Project, tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    m = monitor(bc, tmp_path)
    m.cycle()
    state = orjson.loads((tmp_path / "state" / "state.json").read_bytes())
    state["artifact"] = "sha256:" + "1" * 64
    (tmp_path / "state" / "state.json").write_bytes(orjson.dumps(state))
    with pytest.raises(MonitorError, match="use a fresh --state directory"):
        m.cycle()
    with pytest.raises(MonitorError, match="does not exist"):
        Monitor(bc.artifact, tmp_path / "nope", tmp_path / "state2")


def _through_the_server_log(directory: Path, records: list[dict[str, Any]], **options: Any) -> None:
    """Append ``records`` with the server's PredictionLog: a batch's arrays then go to the blob files."""
    first = records[0]
    log = PredictionLog(directory, model=first["model"], digest=first["digest"], **options)
    for r in records:
        outputs: dict[str, np.ndarray] = {}
        labels: dict[str, tuple[list[str], np.ndarray]] = {}
        for name, value in r["outputs"].items():
            if isinstance(value, dict) and "classes" in value:
                labels[name] = (value["classes"], unpack_array({**value, "classes": None}).astype(np.int64))
                outputs[name] = unpack_array(value)
            else:
                outputs[name] = (
                    unpack_array(value) if isinstance(value, dict) else np.array(value, dtype=object)
                )
        log.append(
            r["id"], r["ts"], r["rows"], unpack_array(r["numeric"]), r["inputs"], outputs, labels or None
        )
    log.close()


def test_batches_in_blob_files_read_the_same_as_inline_ones(bc: Project, tmp_path: Path) -> None:
    frame = shifted(bc.holdout.head(136), MOVED, shift_sd=1.5)  # 3 batches of 40 rows and one of 16
    records = predict_records(bc.artifact, frame, batch=40, prefix="a")
    write_log(tmp_path / "inline" / "log", records)
    inline = monitor(bc, tmp_path / "inline").cycle()
    _through_the_server_log(tmp_path / "log", records, max_bytes=20_000)  # several segments
    assert sum("blob" in r["numeric"] for r in read_lines(tmp_path / "log")) == 3  # the 40-row batches
    assert len(list((tmp_path / "log").glob("predictions-*.jsonl"))) >= 1
    blobbed = monitor(bc, tmp_path).cycle()
    assert blobbed["rows"] == inline["rows"] == len(frame) and blobbed["bad_lines"] == 0
    assert blobbed["status"] == inline["status"] == "drift"
    assert blobbed["windows"] == inline["windows"]  # every statistic equal


def test_a_batch_whose_blob_file_is_gone_is_counted_not_fatal(bc: Project, tmp_path: Path) -> None:
    records = predict_records(bc.artifact, bc.holdout, batch=40, prefix="a")
    _through_the_server_log(tmp_path / "log", records[:3], max_bytes=20_000)
    for blob in (tmp_path / "log").glob("*.bin"):
        blob.unlink()  # e.g. moved away without its .jsonl files
    _through_the_server_log(tmp_path / "log", records[3:])
    report = monitor(bc, tmp_path).cycle()
    assert report["bad_lines"] == 3 and report["rows"] == len(bc.holdout) - 120
