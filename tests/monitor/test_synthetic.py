"""Synthetic traffic in the prediction log (``"synthetic": true``) is kept out of every window and counted.

The smoke test and the post-deploy check send 128 rows (64 one at a time, then as one batch) to the
environment's server. They are holdout rows, not production traffic: judged as traffic they made the
monitor report drift and an outlier rate of 0.81 on a model nobody had called yet (issue 13, item 6).
Records from a server older than the mark carry no ``synthetic`` key: they are judged as before, and
the report says how many rows could not be told apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.service import Monitor
from mlci.monitor.settings import Settings
from mlci.monitor.window import WindowBuilder
from mlci.serving.predlog import unpack_array

from .conftest import Project, predict_records, shifted, write_log

MOVED = ["mean_radius", "mean_texture", "worst_area"]


def monitor(bc: Project, tmp_path: Path, **kwargs: Any) -> Monitor:
    return Monitor(
        bc.artifact, tmp_path / "log", tmp_path / "state",
        settings=Settings(bad_windows=1, good_windows=1, backoff_s=0.0), sleep=lambda _s: None, **kwargs,
    )  # fmt: skip


def smoke_records(bc: Project, prefix: str = "smoke") -> list[dict[str, Any]]:
    """What a smoke test logs: 64 rows one at a time, then the same 64 as one batch; here from rows far
    from training (3 sd off on three features), so that judged as traffic they are drift and outliers."""
    rows = shifted(bc.holdout.head(64), MOVED, shift_sd=3.0)
    single = predict_records(bc.artifact, rows, prefix=f"{prefix}-row", synthetic=True)
    batch = predict_records(bc.artifact, rows, batch=64, prefix=f"{prefix}-batch", synthetic=True)
    return [*single, *batch]


def test_the_builder_leaves_synthetic_records_out_and_counts_them(bc: Project) -> None:
    features = bc.manifest["schema"]["features"]
    builder = WindowBuilder(features, "classification")
    real = predict_records(bc.artifact, bc.holdout.head(10), batch=5, prefix="real")
    old = predict_records(bc.artifact, bc.holdout.head(3), prefix="old", synthetic=None)
    for record in [*smoke_records(bc), *real, *old]:
        builder.add(record)
    window = builder.build()
    assert window.rows == 13 and set(window.ids) == {"real-0", "real-1", "old-0", "old-1", "old-2"}
    assert builder.synthetic_rows == 128 and builder.synthetic_records == 65
    assert builder.unmarked_rows == 3
    assert builder.record_rows == [5, 5, 1, 1, 1]


@pytest.mark.parametrize("mark", ["yes", 1, None])
def test_a_mark_that_is_not_true_or_false_is_refused(bc: Project, mark: Any) -> None:
    builder = WindowBuilder(bc.manifest["schema"]["features"], "classification")
    [record] = predict_records(bc.artifact, bc.holdout.head(1), prefix="odd")
    with pytest.raises(MonitorError, match=r"'synthetic' .* expected true or false"):
        builder.add({**record, "synthetic": mark})
    assert builder.build().rows == 0 and builder.synthetic_rows == 0


def test_smoke_rows_are_never_judged_as_traffic(bc: Project, tmp_path: Path) -> None:
    real = predict_records(bc.artifact, bc.holdout, batch=2, prefix="real")
    write_log(tmp_path / "log", [*smoke_records(bc), *real[:30], *smoke_records(bc, "check"), *real[30:]])
    report = monitor(bc, tmp_path).cycle()
    assert report["rows"] == len(bc.holdout) and report["synthetic_rows"] == 256
    assert sum(w["rows"] for w in report["windows"]) == len(bc.holdout)
    assert report["status"] == "ok", report["message"]
    assert report["drifted_features"] == []
    assert "256 synthetic rows (smoke tests, post-deploy checks) left out" in report["message"]
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_synthetic_rows_total{model="breast-cancer"} 256.0' in metrics
    assert f'mlci_monitor_rows_total{{model="breast-cancer"}} {float(len(bc.holdout))}' in metrics


def test_a_log_of_smoke_rows_only_is_no_traffic_and_is_read_once(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", smoke_records(bc))
    m = monitor(bc, tmp_path)
    report = m.cycle()
    assert report["status"] == "insufficient" and report["rows"] == 0 and report["windows"] == []
    assert report["synthetic_rows"] == 128
    assert report["message"].startswith("need ≥ 100 rows for a verdict, have 0")
    again = m.cycle()  # the smoke lines are behind the cursor: never read, counted or judged again
    assert again["new_lines"] == 0 and again["synthetic_rows"] == 0
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_synthetic_rows_total{model="breast-cancer"} 128.0' in metrics


def test_synthetic_rows_waiting_with_too_few_real_ones_are_counted_once(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", [*smoke_records(bc), *predict_records(bc.artifact, bc.holdout.head(40))])
    m = monitor(bc, tmp_path)
    assert m.cycle()["status"] == "insufficient"  # 40 real rows wait for more; so do the smoke lines
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout.iloc[40:], prefix="b"))
    report = m.cycle()
    assert report["rows"] == len(bc.holdout) and report["synthetic_rows"] == 128
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_synthetic_rows_total{model="breast-cancer"} 128.0' in metrics


def test_labels_of_smoke_requests_never_reach_the_performance_check(bc: Project, tmp_path: Path) -> None:
    smoke = smoke_records(bc)
    real = predict_records(bc.artifact, bc.holdout, batch=4, prefix="real")
    write_log(tmp_path / "log", [*smoke, *real])
    labels = tmp_path / "labels.jsonl"
    flip = {"benign": "malignant", "malignant": "benign"}
    with labels.open("wb") as f:
        for i, r in enumerate(real):
            f.write(orjson.dumps({"id": r["id"], "labels": bc.truth[i * 4 : i * 4 + r["rows"]]}) + b"\n")
        for r in smoke:  # whoever labels the smoke rows gets them all wrong: judged, they would be decay
            predicted = unpack_array(r["outputs"]["label"]).tolist()
            f.write(orjson.dumps({"id": r["id"], "labels": [flip[p] for p in predicted]}) + b"\n")
    report = monitor(bc, tmp_path, labels=labels).cycle()
    performance = report["performance"]
    assert performance["rows"] == len(bc.holdout) and performance["status"] == "ok", performance["message"]


def test_records_from_before_the_mark_are_judged_and_the_report_says_so(bc: Project, tmp_path: Path) -> None:
    old = predict_records(bc.artifact, bc.holdout, batch=2, prefix="old", synthetic=None)
    write_log(tmp_path / "log", old)
    report = monitor(bc, tmp_path).cycle()
    assert report["rows"] == len(bc.holdout) and report["unmarked_rows"] == len(bc.holdout)
    assert (
        f"{len(bc.holdout)} rows were logged by a server from before traffic marking" in report["message"]
        and "judged as real traffic" in report["message"]
    )
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, batch=2, prefix="new"))
    report = monitor(bc, tmp_path).cycle()
    assert report["unmarked_rows"] == 0 and "traffic marking" not in report["message"]
