"""`mlci run` end to end on real data: every supported estimator, reproducibility, the stage cache, run records."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from mlci.config import load_config
from mlci.model.artifact import evidence_of, verify_artifact
from mlci.pipeline import run_pipeline
from mlci.runs import read_runs
from mlci.workspace import Workspace

from .conftest import ProjectFactory, mixed_frame

SCALED = "scale = true"
CASES = {
    "logistic": ("classification", "churn", 'class = "sklearn.linear_model.LogisticRegression"\nparams = { max_iter = 500 }'),
    "random_forest_clf": (
        "classification",
        "churn",
        'class = "sklearn.ensemble.RandomForestClassifier"\nparams = { n_estimators = 15, max_depth = 6 }',
    ),
    "gradient_boosting_clf": (
        "classification",
        "churn",
        'class = "sklearn.ensemble.GradientBoostingClassifier"\nparams = { n_estimators = 20 }',
    ),
    "random_forest_reg": (
        "regression",
        "spend",
        'class = "sklearn.ensemble.RandomForestRegressor"\nparams = { n_estimators = 15, max_depth = 6 }',
    ),
    "ridge": ("regression", "spend", 'class = "sklearn.linear_model.Ridge"\nparams = { alpha = 0.5 }'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimator_end_to_end_on_mixed_csv(make_project: ProjectFactory, case: str) -> None:
    task, target, estimator = CASES[case]
    config = load_config(make_project(estimator + "\n" + SCALED, task=task, target=target))
    result = run_pipeline(config, until="evaluate")
    assert result.status == "ok"
    manifest = verify_artifact(result.artifact)
    evidence = evidence_of(manifest)
    assert manifest["task"] == task
    assert evidence["parity"]["passed"] is True
    kinds = {f["name"]: f["kind"] for f in manifest["schema"]["features"]}
    assert kinds == {"age": "numeric", "income": "numeric", "plan": "categorical", "region": "categorical"}
    model = onnx.load(result.artifact / "model.onnx")
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs["plan"] == onnx.TensorProto.STRING and inputs["age"] == onnx.TensorProto.FLOAT
    if task == "classification":
        assert evidence["metrics"]["accuracy"] > 0.7
        assert set(evidence["metrics"]) >= {"accuracy", "f1", "roc_auc", "log_loss", "per_class"}
        assert evidence["parity"]["label_agreement"] == 1.0
    else:
        assert evidence["metrics"]["r2"] > 0.5
        assert set(evidence["metrics"]) >= {"rmse", "mae", "r2"}
    assert not list(result.artifact.glob("*.skops")), "no pickle-like estimator file may enter the artifact"
    profile = json.loads((result.artifact / "profile.json").read_text())
    assert profile["features"]["plan"]["kind"] == "categorical"
    assert profile["features"]["plan"]["missing_rate"] > 0
    assert profile["outlier"]["train_outlier_rate"] >= 0


def test_bundled_example_is_reproducible_byte_for_byte(example_project: Path, tmp_path: Path) -> None:
    first = run_pipeline(load_config(example_project, tmp_path / "ws1"), until="evaluate")
    second = run_pipeline(load_config(example_project, tmp_path / "ws2"), until="evaluate")
    assert first.digest == second.digest
    for name in ("model.onnx", "outlier.onnx", "profile.json"):
        assert (first.artifact / name).read_bytes() == (second.artifact / name).read_bytes(), name
    manifest = json.loads((first.artifact / "manifest.json").read_text())
    assert manifest["evidence"]["metrics"]["accuracy"] > 0.9
    assert manifest["evidence"]["latency_ms"]["p99"] > 0


def test_random_forest_is_reproducible(make_project: ProjectFactory, tmp_path: Path) -> None:
    path = make_project('class = "sklearn.ensemble.RandomForestClassifier"\nparams = { n_estimators = 10 }')
    a = run_pipeline(load_config(path, tmp_path / "a"), until="evaluate")
    b = run_pipeline(load_config(path, tmp_path / "b"), until="evaluate")
    assert a.digest == b.digest


def test_second_run_is_all_cache_hits_and_same_digest(example_project: Path) -> None:
    config = load_config(example_project)
    cold = run_pipeline(config, until="evaluate")
    warm = run_pipeline(config, until="evaluate")
    assert [e.cache_hit for e in cold.stages] == [False, False, False]
    assert [e.cache_hit for e in warm.stages] == [True, True, True]
    assert warm.digest == cold.digest and warm.metrics == cold.metrics


def test_changing_only_export_config_reuses_training(example_project: Path) -> None:
    cold = run_pipeline(load_config(example_project), until="evaluate")
    text = example_project.read_text() + "\n[export]\nabs_tolerance = 1e-4\n"
    example_project.write_text(text)
    again = run_pipeline(load_config(example_project), until="evaluate")
    assert [e.cache_hit for e in again.stages] == [True, False, False]
    assert again.digest != cold.digest  # the tolerance is recorded in the manifest's parity section


def test_changing_data_retrains(example_project: Path) -> None:
    run_pipeline(load_config(example_project), until="evaluate")
    data = example_project.parent / "data.csv"
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-5]) + "\n")
    again = run_pipeline(load_config(example_project), until="evaluate")
    assert [e.cache_hit for e in again.stages] == [False, False, False]


def test_no_cache_reruns_every_stage(example_project: Path) -> None:
    config = load_config(example_project)
    run_pipeline(config, until="evaluate")
    forced = run_pipeline(config, use_cache=False, until="evaluate")
    assert [e.cache_hit for e in forced.stages] == [False, False, False]


def test_run_records_are_appended_for_success_and_failure(example_project: Path) -> None:
    config = load_config(example_project)
    run_pipeline(config, until="evaluate")
    (example_project.parent / "data.csv").write_text("")
    with pytest.raises(Exception, match="empty"):
        run_pipeline(config, until="evaluate")
    runs = read_runs(Workspace(config.workspace).runs_file)
    assert [r["status"] for r in runs] == ["ok", "failed"]
    assert runs[1]["stages"][0]["stage"] == "train" and runs[1]["stages"][0]["status"] == "failed"
    assert "empty" in runs[1]["error"]
    assert runs[0]["digest"].startswith("sha256:")


def test_split_is_stable_when_rows_are_appended(make_project: ProjectFactory) -> None:
    import pandas as pd

    from mlci.model.data import split_mask

    frame = mixed_frame(300).astype(str)  # the raw cells, as a CSV is read
    more = mixed_frame(350, seed=1).astype(str)
    a = split_mask(frame, 0.2, 5)
    b = split_mask(pd.concat([frame, more], ignore_index=True), 0.2, 5)
    assert (a == b[:300]).all()
    assert (split_mask(frame[frame.columns[::-1]], 0.2, 5) == a).all(), "column order must not move rows"
    assert 0.1 < a.mean() < 0.3
    assert not (split_mask(frame, 0.2, 6) == a).all(), "a different seed must give a different split"


FACTORY_NUMERIC = '''
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def make():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
'''

FACTORY_MIXED = '''
from sklearn.compose import make_column_transformer
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder


def make():
    encode = make_pipeline(SimpleImputer(missing_values="", strategy="constant", fill_value="?"), OneHotEncoder(handle_unknown="ignore"))
    columns = make_column_transformer((SimpleImputer(), ["age", "income"]), (encode, ["plan", "region"]), sparse_threshold=0)
    return make_pipeline(columns, ExtraTreesClassifier(n_estimators=10, random_state=0))
'''


def test_factory_numeric_pipeline_gets_a_column_selector(make_project: ProjectFactory) -> None:
    frame = mixed_frame().drop(columns=["plan", "region", "spend"]).fillna({"age": 40.0})
    config_path = make_project('factory = "my_models:make"', frame=frame, data_extra="")
    (config_path.parent / "my_models.py").write_text(FACTORY_NUMERIC)
    result = run_pipeline(load_config(config_path), until="evaluate")
    manifest = verify_artifact(result.artifact)
    assert [i["name"] for i in manifest["onnx"]["inputs"]] == ["age", "income"]
    assert manifest["code"]["factory_sha256"] and manifest["evidence"]["parity"]["passed"]


def test_factory_with_its_own_column_transformer(make_project: ProjectFactory) -> None:
    config_path = make_project('factory = "my_models:make"')
    (config_path.parent / "my_models.py").write_text(FACTORY_MIXED)
    result = run_pipeline(load_config(config_path), until="evaluate")
    assert verify_artifact(result.artifact)["estimator"]["name"] == "ExtraTreesClassifier"
    # editing the factory's source is a code change: training must run again
    (config_path.parent / "my_models.py").write_text(FACTORY_MIXED.replace("n_estimators=10", "n_estimators=12"))
    again = run_pipeline(load_config(config_path), until="evaluate")
    assert not again.stages[0].cache_hit and again.digest != result.digest


def test_factory_that_cannot_handle_missing_values_says_so(make_project: ProjectFactory) -> None:
    from mlci.errors import ConfigError

    frame = mixed_frame().drop(columns=["plan", "region", "spend"])  # 'age' has missing values
    config_path = make_project('factory = "my_models:make"', frame=frame, data_extra="")
    (config_path.parent / "my_models.py").write_text(FACTORY_NUMERIC)
    with pytest.raises(ConfigError, match="Fitting LogisticRegression failed: Input X contains NaN"):
        run_pipeline(load_config(config_path), until="evaluate")


def test_factory_module_missing_is_a_config_error(make_project: ProjectFactory) -> None:
    from mlci.errors import ConfigError

    config_path = make_project('factory = "no_such_module_here:make"')
    with pytest.raises(ConfigError, match="cannot be imported"):
        run_pipeline(load_config(config_path), until="evaluate")


def test_digest_is_the_same_across_processes_and_hash_seeds(example_project: Path, tmp_path: Path) -> None:
    """skl2onnx orders some ONNX fields by Python set order; the digest must not depend on PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    digests = set()
    for seed in ("1", "4"):  # these two seeds order skl2onnx's opset imports differently
        done = subprocess.run(
            [sys.executable, "-m", "mlci", "run", "-c", str(example_project), "--until", "evaluate", "--json", "--workspace", str(tmp_path / seed)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
        )
        digests.add(json.loads(done.stdout)["digest"])
    assert len(digests) == 1, digests


def test_two_concurrent_no_cache_runs_share_a_workspace(example_project: Path) -> None:
    """Two `mlci run --no-cache` in one workspace: the second deleted the cache entries the first was reading.

    The first run crashed with FileNotFoundError on `.mlci/cache/train/<key>/split.json`. Real processes;
    the second starts once the first has written its train entry, i.e. while it exports and evaluates.
    """
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "mlci", "run", "-c", str(example_project), "--no-cache", "--until", "evaluate", "--json"]
    train_cache = example_project.parent / ".mlci" / "cache" / "train"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (train_cache.is_dir() and any(not p.name.startswith(".") for p in train_cache.iterdir())):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never wrote its train entry"
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second could start: no overlap to test"
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(*p.communicate(timeout=300), p.returncode) for p in (first, second)]
    for _out, err, code in results:
        assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "waiting: the workspace" in results[1][1], results[1][1]
    digests = {json.loads(out)["digest"] for out, _err, _code in results}
    assert len(digests) == 1, digests


def test_a_failed_smoke_test_fails_its_stage_and_a_run_until_smoke(example_project: Path) -> None:
    """Issue 13 item 1: a smoke test that ran and failed is not `ok`; `run_pipeline` says so with the whole result."""
    from mlci.errors import CheckFailed

    example_project.write_text(example_project.read_text() + "\n[smoke]\nrows = 8\nmax_p99_ms = 0.000001\n")
    config = load_config(example_project)
    events = []
    with pytest.raises(CheckFailed, match="smoke test failed") as info:
        run_pipeline(config, until="smoke", on_event=events.append)
    result = info.value.result  # a CandidateRejected: the whole run, for the caller to report
    assert result.status == "failed" and result.digest and result.metrics["accuracy"] > 0.9
    smoke = [e for e in events if e.stage == "smoke" and e.status != "running"]
    assert [e.status for e in smoke] == ["failed"] and "budget" in (smoke[0].error or ""), smoke
    record = read_runs(Workspace(config.workspace).runs_file)[-1]
    assert record["status"] == "failed" and record["error"].startswith("The smoke test failed")
    assert (record["stages"][-1]["stage"], record["stages"][-1]["status"]) == ("smoke", "failed")
