"""The gate on real artifacts: first run, comparison with production on the same rows, policy checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlci.config import Config, load_config
from mlci.model.gate import run_gate, verdict_markdown
from mlci.pipeline import run_pipeline

from .conftest import EXAMPLE

STUMP = 'class = "sklearn.tree.DecisionTreeClassifier"\nparams = { max_depth = 1 }'
LOGISTIC = 'class = "sklearn.linear_model.LogisticRegression"\nparams = { C = 1.0, max_iter = 1000 }'


def project(root: Path, estimator: str, gate: str = "") -> Path:
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE / "data.csv", root / "data.csv")
    text = (EXAMPLE / "mlci.toml").read_text()
    start = text.index("[estimator]")
    (root / "mlci.toml").write_text(text[:start] + "[estimator]\n" + estimator + "\n" + gate)
    return root / "mlci.toml"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gate")
    return {
        name: run_pipeline(load_config(project(base / name, est)), until="evaluate").artifact  # type: ignore[misc]
        for name, est in (("logistic", LOGISTIC), ("stump", STUMP))
    }


def config_with(tmp_path: Path, gate: str) -> Config:
    return load_config(project(tmp_path / "cfg", LOGISTIC, "[gate]\n" + gate))


def test_first_run_states_it_and_applies_absolute_checks(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, "min = { accuracy = 0.9 }\nrequire_smoke = false")
    verdict = run_gate(config, artifacts["logistic"], None).to_json()
    assert verdict["passed"] and verdict["first_run"] and verdict["production"] is None
    assert [c["kind"] for c in verdict["checks"]] == ["absolute", "baseline", "parity"]
    assert "first release" in verdict_markdown(verdict)


def test_absolute_threshold_fails_with_figure_and_reason(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, "min = { accuracy = 0.999 }\nmax = { log_loss = 0.01 }\nrequire_smoke = false")
    verdict = run_gate(config, artifacts["stump"], None)  # a depth-1 tree: well above the baseline, below these
    assert not verdict.passed
    failed = {c.name: c for c in verdict.checks if not c.passed}
    assert set(failed) == {"min accuracy", "max log_loss"}
    assert failed["min accuracy"].threshold == 0.999 and "is not >= 0.9990" in failed["min accuracy"].reason


def test_worse_candidate_is_blocked_with_a_p_value(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, "non_inferiority = { accuracy = 0.01, roc_auc = 0.01 }\nrequire_smoke = false")
    verdict = run_gate(config, artifacts["stump"], artifacts["logistic"])
    assert not verdict.passed and not verdict.first_run
    checks = {c.name: c for c in verdict.checks}
    accuracy, auc = checks["non-inferiority accuracy"], checks["non-inferiority roc_auc"]
    assert not accuracy.passed and accuracy.p_value is not None and accuracy.p_value < 0.05
    assert not auc.passed and auc.interval is not None and auc.interval[1] < -0.01
    md = verdict_markdown(verdict.to_json())
    assert "❌" in md and "McNemar p=" in md and "| non-inferiority roc_auc | **FAIL**" in md


def test_better_candidate_passes_and_can_be_required_to_be_better(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, 'non_inferiority = { accuracy = 0.0 }\nrequire_better = ["roc_auc"]\nrequire_smoke = false')
    verdict = run_gate(config, artifacts["logistic"], artifacts["stump"])
    assert verdict.passed, [c.reason for c in verdict.checks]
    assert {c.name for c in verdict.checks} >= {"non-inferiority accuracy", "superiority roc_auc"}


def test_identical_model_is_not_better_with_confidence(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, 'require_better = ["accuracy"]\nrequire_smoke = false')
    shutil.copytree(artifacts["logistic"], tmp_path / "copy")
    verdict = run_gate(config, artifacts["logistic"], artifacts["stump"])
    assert verdict.passed
    same = run_gate(config, artifacts["logistic"], tmp_path / "copy")
    assert same.passed and "same digest" in same.checks[-1].reason


def test_smoke_is_required_by_default_and_budgets_apply(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, "max_model_bytes = 10\nmax_latency_p99_ms = 1000")
    verdict = run_gate(config, artifacts["logistic"], None)
    failed = {c.name for c in verdict.checks if not c.passed}
    assert failed == {"smoke", "model size"}
    ok = run_gate(config, artifacts["logistic"], None, smoke={"passed": True, "p99_ms": 3.0, "max_p99_ms": 250})
    assert {c.name for c in ok.checks if not c.passed} == {"model size"}


def test_verdict_is_deterministic_json(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = config_with(tmp_path, "require_smoke = false")
    a = run_gate(config, artifacts["stump"], artifacts["logistic"]).to_json()
    b = run_gate(config, artifacts["stump"], artifacts["logistic"]).to_json()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_tampered_candidate_is_refused(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    from mlci.errors import DataError

    bad = tmp_path / "bad"
    shutil.copytree(artifacts["logistic"], bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"x")
    with pytest.raises(DataError, match=r"model\.onnx"):
        run_gate(config_with(tmp_path, "require_smoke = false"), bad, None)


def test_the_size_budget_reads_the_hashed_file_size_not_the_evidence(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """The model's size is a fact of its identity (files["model.onnx"]["size"], hashed), not a measurement:
    evidence resealed to claim a small model must not pass the budget."""
    import json

    from mlci.canonical import write_json
    from mlci.model.artifact import seal

    forged = tmp_path / "forged"
    shutil.copytree(artifacts["logistic"], forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["evidence"]["metrics"]["model_size_bytes"] = 1
    write_json(forged / "manifest.json", seal(manifest))
    config = config_with(tmp_path, "max_model_bytes = 10\nrequire_smoke = false")
    size = next(c for c in run_gate(config, forged, None).checks if c.name == "model size")
    assert not size.passed and size.figure == manifest["files"]["model.onnx"]["size"], size
