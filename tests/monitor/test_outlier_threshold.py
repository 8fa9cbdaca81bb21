"""The outlier threshold is calibrated at training time and the monitor applies the same one.

An IsolationForest with contamination "auto" flags rows whose score is below a fixed offset; on the
bundled example that is 11 % of the rows it was fitted on and 15 % of held-out ones, so the monitor's
"outlier rate" was mostly normal traffic. The evaluate stage now stores the score below which the
configured share of *training* rows falls (``[evaluate] outlier_quantile``, default 0.01); the monitor
flags rows below that score and compares the window with the rate measured on *held-out* rows, and says so.

The forest is real (fit_outlier_model: scikit-learn, skl2onnx, onnxruntime) and so is the detector the
monitor runs (OutlierDetector on the exported bytes). Rates on fresh normal rows are pooled over seeds
and checked against binomial quantiles (computed, not guessed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlci.config import ConfigError, load_config
from mlci.model.data import Feature, Schema
from mlci.model.evaluate import fit_outlier_model
from mlci.monitor.outliers import OutlierDetector, outlier_reference, outlier_test

SCHEMA = Schema(
    (
        *(Feature(f"x{i}", "numeric") for i in range(5)),
        Feature("rating", "numeric"),
        Feature("plan", "categorical"),
    ),
    "t",
    "classification",
)
FEATURES = [{"name": f.name, "kind": f.kind} for f in SCHEMA.features]

TOML = """
[model]
name = "outliers"
task = "classification"

[data]
path = "data.csv"
target = "t"

[split]
seed = {seed}

[estimator]
class = "sklearn.linear_model.LogisticRegression"

[evaluate]
outlier_estimators = 100
{extra}
"""


def config(tmp_path: Path, seed: int = 0, extra: str = "") -> Any:
    path = tmp_path / f"mlci-{seed}.toml"
    path.write_text(TOML.format(seed=seed, extra=extra))
    return load_config(path)


def normal_rows(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Correlated Gaussians (values in tenths), a 1-5 rating and a category: the training distribution."""
    factor = rng.normal(size=rows)
    frame = pd.DataFrame(
        {f"x{i}": np.round(10 * (0.6 * factor + 0.8 * rng.normal(size=rows)), 1) for i in range(5)}
    )
    frame["rating"] = np.clip(np.round(3 + factor), 1, 5)
    frame["plan"] = rng.choice(["basic", "plus", "pro"], rows, p=[0.6, 0.3, 0.1]).astype(object)
    return frame.astype({f"x{i}": "float64" for i in range(5)})


def columns_of(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The window's columns as the monitor builds them (numeric float64 of the float32 logged, strings)."""
    return {
        f["name"]: frame[f["name"]].to_numpy(np.float32).astype(np.float64)
        if f["kind"] == "numeric"
        else frame[f["name"]].to_numpy(dtype=object)
        for f in FEATURES
    }


def flagged(model: bytes, profile_outlier: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """Rows of ``frame`` the monitor flags, with the threshold the profile stores."""
    reference = outlier_reference({"outlier": profile_outlier})
    detector = OutlierDetector(model, FEATURES, threshold=reference.threshold)
    flags, _ = detector.score(columns_of(frame))
    return flags


def upper(successes_p: float, trials: int, level: float = 0.999) -> int:
    return int(stats.binom.ppf(level, trials, successes_p))


def lower(successes_p: float, trials: int, level: float = 0.001) -> int:
    return int(stats.binom.ppf(level, trials, successes_p))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, dict[str, Any], pd.DataFrame]]:
    """Four forests, each fitted on 3,000 normal rows (seeded) with a 1,000-row holdout."""
    tmp = tmp_path_factory.mktemp("outliers")
    out = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        train, hold = normal_rows(3000, rng), normal_rows(1000, rng)
        model, info = fit_outlier_model(train, SCHEMA, config(tmp, seed), hold)
        out.append((model, info, train))
    return out


def test_the_threshold_flags_the_configured_share_of_training_rows(fitted: list[Any]) -> None:
    """Default outlier_quantile 0.01: 1 % of the rows the forest was fitted on, counted by the monitor's detector."""
    for model, info, train in fitted:
        assert info["threshold_quantile"] == 0.01
        rate = float(flagged(model, info, train).mean())
        assert rate == pytest.approx(0.01, abs=0.002), f"{rate:.4f} of training rows flagged; expected 0.01"
        assert info["train_outlier_rate"] == pytest.approx(rate, abs=1e-9)


def test_held_out_normal_rows_are_flagged_at_a_comparable_rate(fitted: list[Any]) -> None:
    """Fresh rows of the training distribution, pooled over forests: between half and twice the training share.

    A forest scores its own training rows as slightly more normal than unseen ones, so the held-out rate
    may exceed 1 %, but not by a multiple: the count must lie inside the 99.9 % binomial range of rates
    0.005 and 0.02 (with contamination "auto" it was 11 % to 49 %)."""
    flagged_rows = rows = 0
    for k, (model, info, _) in enumerate(fitted):
        fresh = normal_rows(5000, np.random.default_rng(100 + k))
        flagged_rows += int(flagged(model, info, fresh).sum())
        rows += len(fresh)
        assert (
            0.0 <= info["holdout_outlier_rate"] <= 0.03
        )  # what the profile records for its 1,000 held-out rows
    assert lower(0.005, rows) <= flagged_rows <= upper(0.02, rows), (
        f"{flagged_rows}/{rows} held-out normal rows flagged"
    )


def test_genuine_outliers_are_still_flagged(fitted: list[Any]) -> None:
    """Rows 6 standard deviations out on every numeric feature: nearly all flagged.

    (A forest isolates a row that is out of range on one feature of nine encoded columns only a little
    faster than a normal one, so such rows score near the 1 % threshold; per-feature shifts are the drift
    tests' job.)"""
    for k, (model, info, _) in enumerate(fitted):
        odd = normal_rows(500, np.random.default_rng(200 + k))
        for i in range(5):
            odd[f"x{i}"] += 60.0
        assert flagged(model, info, odd).mean() >= 0.95


def test_the_quantile_is_configurable_and_validated(tmp_path: Path) -> None:
    """[evaluate] outlier_quantile: 0.05 flags 5 % of the training rows; values outside (0, 0.5) are refused."""
    rng = np.random.default_rng(9)
    train = normal_rows(2000, rng)
    model, info = fit_outlier_model(train, SCHEMA, config(tmp_path, 1, "outlier_quantile = 0.05"), None)
    assert info["threshold_quantile"] == 0.05
    assert float(flagged(model, info, train).mean()) == pytest.approx(0.05, abs=0.003)
    assert config(tmp_path, 2).evaluate.outlier_quantile == 0.01
    for bad in ("0", "0.5", "-0.1"):
        with pytest.raises(
            ConfigError, match=r"\[evaluate\] outlier_quantile is the share of training rows"
        ) as caught:
            config(tmp_path, 3, f"outlier_quantile = {bad}")
        assert "strictly between 0 and 0.5 (default 0.01); got" in str(caught.value)
    for bad in ('"1%"', "true"):
        with pytest.raises(ConfigError, match=r"\[evaluate\] outlier_quantile must be float or int; got"):
            config(tmp_path, 3, f"outlier_quantile = {bad}")


def test_the_comparison_names_held_out_and_training_rates() -> None:
    """The reference is the held-out rate, named as such; the training rate is named as the training rate."""
    reference = outlier_reference(
        {"outlier": {"holdout_outlier_rate": 0.012, "train_outlier_rate": 0.01, "score_threshold": -0.02}}
    )
    assert (reference.rate, reference.threshold, reference.source) == (0.012, -0.02, "held-out rows")
    report = outlier_test(
        np.zeros(500, dtype=bool), reference.rate, reference=reference.source, scores=np.zeros(500)
    )
    assert "in training" not in report.message
    assert report.message.startswith("outlier rate 0.000 in this window vs 0.012 on held-out rows"), (
        report.message
    )
    assert (report.reference_rate, report.reference) == (0.012, "held-out rows")


def test_old_artifacts_keep_the_forest_label_and_name_their_reference() -> None:
    """Profiles before calibration have no score_threshold: the detector's own label, and the rate it was
    measured on (held-out rows when recorded, else the training rows the forest was fitted on)."""
    held = outlier_reference({"outlier": {"holdout_outlier_rate": 0.154, "train_outlier_rate": 0.113}})
    assert (held.threshold, held.rate, held.source) == (None, 0.154, "held-out rows")
    fitted_on = outlier_reference({"outlier": {"train_outlier_rate": 0.113}})
    assert (fitted_on.threshold, fitted_on.rate, fitted_on.source) == (None, 0.113, "training rows")
    message = outlier_test(np.zeros(200, dtype=bool), fitted_on.rate, reference=fitted_on.source).message
    assert "vs 0.113 on training rows" in message
