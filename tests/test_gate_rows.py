"""The gate compares on rows neither model trained on, and a candidate must beat a trivial baseline.

Real pipelines on a 3-class dataset with a small-integer `year`, string categories and an ID column
(the shape of issue 13's report): the split, the comparison set and the verdict are read back from
what the stages wrote, never recomputed with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.errors import ConfigError
from mlci.model.gate import run_gate, verdict_markdown
from mlci.pipeline import RunResult, run_pipeline
from mlci.workspace import Workspace

from .conftest import mixed_frame, reseal

TOML = """
[model]
name = "trees"
task = "classification"

[data]
path = "data.csv"
target = "species"
drop = ["id"]
{features}

[split]
holdout = {holdout}
seed = {seed}

[estimator]
{estimator}

[evaluate]
latency_runs = 20
outlier_estimators = 10

[gate]
require_smoke = false
{gate}
"""
LOGISTIC = (
    'class = "sklearn.linear_model.LogisticRegression"\nparams = { C = 1.0, max_iter = 1000 }\nscale = true'
)
# Regularised to nothing: predicts the majority class for every row (issue 13: accuracy 0.47 on 3 classes).
USELESS = (
    'class = "sklearn.linear_model.LogisticRegression"\nparams = { C = 1e-8, max_iter = 1000 }\nscale = true'
)
ALL_NUMERIC_YEAR = ""  # inferred: year is numeric
CATEGORICAL_YEAR = (
    '[data.features]\nyear = "categorical"\nx1 = "numeric"\nx2 = "numeric"\ncolour = "categorical"'
)
WITHOUT_X2 = '[data.features]\nyear = "numeric"\nx1 = "numeric"\ncolour = "categorical"'


def species_frame(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """3 classes (about 47/33/20 %), learnable from x1, x2 and colour; year is a small integer."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "year": rng.integers(2005, 2015, rows),
            "x1": rng.normal(0, 1, rows).round(2),
            "x2": rng.normal(0, 1, rows).round(2),
            "colour": rng.choice(["red", "green", "blue"], rows),
        }
    )
    score = frame["x1"] + 0.8 * frame["x2"] + (frame["colour"] == "red") * 0.7 + rng.normal(0, 0.4, rows)
    frame["species"] = np.where(score < 0.35, "oak", np.where(score < 1.4, "ash", "elm"))
    return frame


def write_project(root: Path, *, features: str = "", estimator: str = LOGISTIC, gate: str = "", seed: int = 7,
                  holdout: float = 0.25, frame: pd.DataFrame | None = None) -> Path:  # fmt: skip
    """mlci.toml + data.csv in ``root`` (rewritten in place: a second call is the user editing the config)."""
    root.mkdir(parents=True, exist_ok=True)
    if frame is not None or not (root / "data.csv").exists():
        (species_frame() if frame is None else frame).to_csv(root / "data.csv", index=False)
    (root / "mlci.toml").write_text(
        TOML.format(features=features, estimator=estimator, gate=gate, seed=seed, holdout=holdout)
    )
    return root / "mlci.toml"


def split_of(cfg: Path, result: RunResult) -> dict[str, Any]:
    """The split.json the train stage of ``result`` wrote (the rows that model held out)."""
    key = next(e.key for e in result.stages if e.stage == "train" and e.key)
    return json.loads(
        (Workspace(load_config(cfg).workspace).stage_dir("train", key) / "split.json").read_text()
    )


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# --- 3. the comparison set is rows neither model trained on -------------------------------------------------


def test_retyping_a_feature_keeps_the_split_and_the_pipeline_gates_on_unseen_rows(tmp_path: Path) -> None:
    """Issue 13: `year` numeric → categorical moved 77 of 97 holdout rows into production's training set."""
    cfg = write_project(tmp_path / "p", features=ALL_NUMERIC_YEAR)
    first = run_pipeline(load_config(cfg), until="evaluate")
    code, out = invoke("push", str(first.artifact), "-c", str(cfg), "--tag", "production", "--json")
    assert code == 0, out

    write_project(tmp_path / "p", features=CATEGORICAL_YEAR)  # the user retypes year, nothing else
    second = run_pipeline(load_config(cfg), until="gate")
    prod_split, cand_split = split_of(cfg, first), split_of(cfg, second)
    assert cand_split["holdout_rows"] == prod_split["holdout_rows"], (
        "the holdout must not depend on the feature types"
    )

    verdict = second.verdict
    assert verdict is not None and verdict["production"] == first.digest and not verdict["first_run"]
    assert verdict["compared_rows"] == len(prod_split["holdout_rows"])
    assert verdict["metrics"]["compared"]["rows"] == len(prod_split["holdout_rows"])
    assert any(c["name"] == "non-inferiority accuracy" for c in verdict["checks"])
    gate_key = next(e.key for e in second.stages if e.stage == "gate")
    md = (Workspace(load_config(cfg).workspace).stage_dir("gate", gate_key) / "verdict.md").read_text()
    assert f"on {len(prod_split['holdout_rows'])} rows neither model trained on" in md, md


def test_removed_feature_is_compared_through_productions_own_schema(tmp_path: Path) -> None:
    """Removing a feature used to fail with 'production needs features absent from the data'."""
    prod_cfg = write_project(tmp_path / "prod")
    prod = run_pipeline(load_config(prod_cfg), until="evaluate")
    cand_cfg = write_project(tmp_path / "cand", features=WITHOUT_X2)
    cand = run_pipeline(load_config(cand_cfg), until="evaluate")
    assert cand.artifact is not None and prod.artifact is not None

    code, out = invoke(
        "gate",
        str(cand.artifact),
        "-c",
        str(cand_cfg),
        "--production",
        str(prod.artifact),
        "--format",
        "json",
    )
    verdict = json.loads(out[out.index("{") :])
    held = set(split_of(prod_cfg, prod)["holdout_rows"]) & set(split_of(cand_cfg, cand)["holdout_rows"])
    assert verdict["compared_rows"] == len(held) > 100, verdict
    comparison = {c["name"]: c for c in verdict["checks"] if c["kind"] == "comparison"}
    assert "non-inferiority accuracy" in comparison, comparison
    # Without x2 the candidate is much worse on the same rows: the comparison can now say so.
    assert not comparison["non-inferiority accuracy"]["passed"] and code == 1
    code, out = invoke("gate", str(cand.artifact), "-c", str(cand_cfg), "--production", str(prod.artifact))
    assert code == 1 and f"gate FAILED (vs production on {len(held)} rows neither model trained on)" in out, (
        out
    )


def test_too_few_unseen_rows_fail_the_comparison_saying_why_and_how(tmp_path: Path) -> None:
    """A different [split] seed: the two holdouts share ~1/16 of the rows; the old gate compared on rows production trained on."""
    prod_cfg = write_project(tmp_path / "prod")
    prod = run_pipeline(load_config(prod_cfg), until="evaluate")
    cand_cfg = write_project(tmp_path / "cand", seed=8)
    cand = run_pipeline(load_config(cand_cfg), until="evaluate")
    held = set(split_of(prod_cfg, prod)["holdout_rows"]) & set(split_of(cand_cfg, cand)["holdout_rows"])
    assert len(held) < 50

    verdict = run_gate(load_config(cand_cfg), cand.artifact, prod.artifact)  # type: ignore[arg-type]
    assert not verdict.passed and verdict.compared_rows is None
    failed = {c.name: c.reason for c in verdict.checks if not c.passed}
    assert set(failed) == {"comparison"}, failed
    reason = failed["comparison"]
    assert f"only {len(held)} rows" in reason and "neither model trained on" in reason
    assert "seed = 7" in reason and "min_compared_rows" in reason, reason
    md = verdict_markdown(verdict.to_json())
    assert "not compared" in md and "| comparison | **FAIL**" in md

    # With the threshold lowered knowingly, it compares on exactly those rows.
    low = write_project(tmp_path / "cand", seed=8, gate="min_compared_rows = 10")
    lowered = run_gate(load_config(low), cand.artifact, prod.artifact)  # type: ignore[arg-type]
    assert lowered.compared_rows == len(held)


def _legacy_production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, RunResult]:
    """An artifact as mlci built it before this change: split by pandas' hash of the typed features, no data.split."""
    import mlci.model.train as train
    from mlci.model.data import legacy_holdout_mask

    cfg = write_project(tmp_path / "prod")
    with monkeypatch.context() as m:
        m.setattr(
            train,
            "holdout_mask",
            lambda data, fraction, seed: legacy_holdout_mask(data.X, data.y, fraction, seed),
        )
        result = run_pipeline(load_config(cfg), until="evaluate", use_cache=False)
    assert result.artifact is not None
    manifest = json.loads((result.artifact / "manifest.json").read_text())
    del manifest["data"]["split"]
    (result.artifact / "manifest.json").write_text(json.dumps(manifest))
    reseal(result.artifact)
    return cfg, result


def test_production_built_before_the_change_is_compared_on_its_recomputed_holdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prod_cfg, prod = _legacy_production(tmp_path, monkeypatch)
    cand_cfg = write_project(tmp_path / "cand", features=CATEGORICAL_YEAR)
    cand = run_pipeline(load_config(cand_cfg), until="evaluate")
    held = set(split_of(prod_cfg, prod)["holdout_rows"]) & set(split_of(cand_cfg, cand)["holdout_rows"])
    assert 10 < len(held) < 50

    refused = run_gate(load_config(cand_cfg), cand.artifact, prod.artifact)  # type: ignore[arg-type]
    reason = next(c.reason for c in refused.checks if c.name == "comparison")
    assert not refused.passed and f"only {len(held)} rows" in reason
    assert "older mlci" in reason and "Rebuild production with this mlci" in reason, reason

    cfg = write_project(tmp_path / "cand", features=CATEGORICAL_YEAR, gate="min_compared_rows = 10")
    verdict = run_gate(load_config(cfg), cand.artifact, prod.artifact).to_json()  # type: ignore[arg-type]
    assert verdict["compared_rows"] == len(held)
    assert verdict["notes"] and "typed-row-v1" in verdict["notes"][0]
    assert "typed-row-v1" in verdict_markdown(verdict)


def test_a_holdout_that_cannot_be_recomputed_is_refused_not_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recomputing the legacy split on production's own data file must give the row count it recorded."""
    _, prod = _legacy_production(tmp_path, monkeypatch)
    assert prod.artifact is not None
    manifest = json.loads((prod.artifact / "manifest.json").read_text())
    manifest["data"]["holdout_rows"] += 1  # as if a different pandas had hashed the rows differently
    (prod.artifact / "manifest.json").write_text(json.dumps(manifest))
    reseal(prod.artifact)
    cand_cfg = write_project(tmp_path / "cand", gate="min_compared_rows = 10")
    cand = run_pipeline(load_config(cand_cfg), until="evaluate")
    verdict = run_gate(load_config(cand_cfg), cand.artifact, prod.artifact)  # type: ignore[arg-type]
    reason = next(c.reason for c in verdict.checks if c.name == "comparison")
    assert not verdict.passed and "cannot be identified" in reason and "Rebuild it" in reason, reason


def test_a_split_column_missing_from_the_data_is_named(tmp_path: Path) -> None:
    prod_cfg = write_project(tmp_path / "prod")
    prod = run_pipeline(load_config(prod_cfg), until="evaluate")
    cand_cfg = write_project(tmp_path / "cand", frame=species_frame().drop(columns=["id"]))
    (cand_cfg.parent / "mlci.toml").write_text(cand_cfg.read_text().replace('drop = ["id"]\n', ""))
    cand = run_pipeline(load_config(cand_cfg), until="evaluate")
    verdict = run_gate(load_config(cand_cfg), cand.artifact, prod.artifact)  # type: ignore[arg-type]
    reason = next(c.reason for c in verdict.checks if c.name == "comparison")
    assert not verdict.passed and "'id'" in reason and "Restore the columns" in reason, reason


# --- 4. a candidate must beat a trivial baseline --------------------------------------------------------------


def test_a_model_that_learned_nothing_fails_its_first_release(tmp_path: Path) -> None:
    cfg = write_project(tmp_path / "p", estimator=USELESS)
    result = run_pipeline(load_config(cfg), until="evaluate")
    assert result.metrics["accuracy"] < 0.6  # one class for every row
    verdict = run_gate(load_config(cfg), result.artifact, None)  # type: ignore[arg-type]
    assert verdict.first_run and not verdict.passed
    failed = {c.name: c for c in verdict.checks if not c.passed}
    assert set(failed) == {"beats baseline accuracy"}, failed
    assert "majority class 'oak'" in failed["beats baseline accuracy"].reason
    assert verdict.metrics["holdout"]["baseline"]["accuracy"] == result.metrics["accuracy"]
    md = verdict_markdown(verdict.to_json())
    assert "❌" in md and "first release" in md and "baseline: majority class 'oak'" in md, md


def test_a_real_model_beats_the_baseline_and_the_comment_shows_the_metrics(tmp_path: Path) -> None:
    cfg = write_project(tmp_path / "p")
    result = run_pipeline(load_config(cfg), until="gate")
    verdict = result.verdict
    assert verdict is not None and verdict["passed"] and verdict["first_run"], verdict
    baseline = [c for c in verdict["checks"] if c["kind"] == "baseline"]
    assert [c["name"] for c in baseline] == ["beats baseline accuracy"] and baseline[0]["passed"]
    assert baseline[0]["p_value"] < 0.05
    held = verdict["metrics"]["holdout"]
    truth = pd.read_csv(cfg.parent / "data.csv")["species"]
    train_rows = sorted(set(range(len(truth))) - set(split_of(cfg, result)["holdout_rows"]))
    majority = truth[train_rows].value_counts().idxmax()
    hold = truth[split_of(cfg, result)["holdout_rows"]]
    assert held["baseline"]["accuracy"] == pytest.approx((hold == majority).mean())
    assert held["candidate"]["accuracy"] == result.metrics["accuracy"]
    md = verdict_markdown(verdict)
    assert f"Metrics on the candidate's {held['rows']} holdout rows" in md
    assert f"| accuracy | {held['candidate']['accuracy']:.4f} | {held['baseline']['accuracy']:.4f} |" in md, (
        md
    )


def test_regression_must_beat_the_training_mean(make_project: Any) -> None:
    ridge = 'class = "sklearn.linear_model.Ridge"\nparams = { alpha = 1.0 }'
    gate = "[gate]\nrequire_smoke = false\n"
    good = load_config(make_project(ridge, task="regression", target="spend", extra=gate))
    # age is noise for spend (see mixed_frame): a model of age alone has nothing over the mean.
    noise = load_config(
        make_project(
            ridge,
            task="regression",
            target="spend",
            extra=gate,
            data_extra='[data.features]\nage = "numeric"',
        )
    )
    ok = run_gate(good, run_pipeline(good, until="evaluate").artifact, None)  # type: ignore[arg-type]
    result = run_pipeline(noise, until="evaluate")
    bad = run_gate(noise, result.artifact, None)  # type: ignore[arg-type]
    assert ok.passed, [c.reason for c in ok.checks]
    assert not bad.passed and {c.name for c in bad.checks if not c.passed} == {"beats baseline r2"}
    train_rows = sorted(set(range(400)) - set(split_of(noise.path, result)["holdout_rows"]))
    model = bad.metrics["holdout"]["baseline"]["model"]
    assert model == f"mean predictor ({mixed_frame()['spend'][train_rows].mean():.4g})"


def test_baseline_none_opts_out_and_a_bad_value_is_refused(tmp_path: Path) -> None:
    cfg = write_project(tmp_path / "p", estimator=USELESS, gate='baseline = "none"')
    result = run_pipeline(load_config(cfg), until="evaluate")
    verdict = run_gate(load_config(cfg), result.artifact, None)  # type: ignore[arg-type]
    assert verdict.passed and not [c for c in verdict.checks if c.kind == "baseline"]
    assert 'baseline = "none"' in verdict_markdown(verdict.to_json())
    write_project(tmp_path / "p", gate='baseline = "majority"')
    with pytest.raises(
        ConfigError, match=r'\[gate\] baseline must be "trivial" .* or "none" .*; got \'majority\''
    ):
        load_config(cfg)
    write_project(tmp_path / "p", gate="min_compared_rows = 0")
    with pytest.raises(ConfigError, match=r"\[gate\] min_compared_rows must be >= 1 row; got 0"):
        load_config(cfg)


def test_init_writes_the_gate_baseline(tmp_path: Path) -> None:
    species_frame().to_csv(tmp_path / "data.csv", index=False)
    code, out = invoke("init", str(tmp_path / "data.csv"), "--target", "species", "--dir", str(tmp_path))
    assert code == 0, out
    text = (tmp_path / "mlci.toml").read_text()
    assert '\n[gate]\nbaseline = "trivial"' in text, text
    assert load_config(tmp_path / "mlci.toml").gate.baseline == "trivial"


def test_an_empty_metric_set_still_makes_the_baseline_check_accuracy(tmp_path: Path) -> None:
    """An empty [gate.non_inferiority] and no require_better used to leave the baseline with no check at all."""
    cfg = write_project(tmp_path / "p", estimator=USELESS, gate="[gate.non_inferiority]")
    assert load_config(cfg).gate.non_inferiority == {} and not load_config(cfg).gate.require_better
    result = run_pipeline(load_config(cfg), until="evaluate")
    verdict = run_gate(load_config(cfg), result.artifact, None)  # type: ignore[arg-type]
    assert not verdict.passed, [c.reason for c in verdict.checks]
    failed = {c.name: c.reason for c in verdict.checks if not c.passed}
    assert set(failed) == {"beats baseline accuracy"}, failed
    assert "no metric is compared" in failed["beats baseline accuracy"], failed
    assert "accuracy" in failed["beats baseline accuracy"]


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda data: data.pop("seed"), "seed"),
        (lambda data: data.pop("holdout_fraction"), "holdout_fraction"),
        (lambda data: data["split"].pop("columns"), "split.columns"),
        (lambda data: data["split"].update(columns=5), "split.columns"),
        (lambda data: data.update(seed="seven"), "seed"),
        (lambda data: data.update(split="hash"), "split"),
    ],
)
def test_a_production_manifest_without_its_split_fails_the_gate_clearly(
    tmp_path: Path, damage: Any, what: str
) -> None:
    """A manifest from another mlci (data.split keys missing or mistyped) used to escape as a KeyError/TypeError."""
    import shutil

    cfg = write_project(tmp_path / "p")
    result = run_pipeline(load_config(cfg), until="evaluate")
    assert result.artifact is not None
    prod = tmp_path / "prod-artifact"
    shutil.copytree(result.artifact, prod)
    manifest = json.loads((prod / "manifest.json").read_text())
    damage(manifest["data"])
    (prod / "manifest.json").write_text(json.dumps(manifest))
    reseal(prod)
    verdict = run_gate(load_config(cfg), result.artifact, prod)
    failed = {c.name: c.reason for c in verdict.checks if not c.passed}
    assert not verdict.passed and set(failed) == {"comparison"}, failed
    reason = failed["comparison"]
    assert f"data.{what}" in reason and "Rebuild" in reason, reason
