"""Drift tests validated statistically: false-alarm rate, detection naming the features, correction, sample size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlci.model.data import Feature, Schema
from mlci.model.evaluate import build_profile
from mlci.model.onnxio import Prediction
from mlci.monitor.drift import DriftSettings, adjust_p_values, compare_counts, detect_drift
from mlci.monitor.errors import MonitorError
from mlci.monitor.window import build_window

from .conftest import Project, predict_records, shifted

SCHEMA = Schema(
    (Feature("x", "numeric"), Feature("y", "numeric"), Feature("z", "numeric"), Feature("c", "categorical")),
    "t",
    "regression",
)


def synthetic(
    rows: int, rng: np.random.Generator, *, x_shift: float = 0.0, c_new: float = 0.0, y_missing: float = 0.0
) -> pd.DataFrame:
    """Three numeric features (normal, lognormal, uniform) and a category; optional shifts."""
    frame = pd.DataFrame({
        "x": rng.normal(x_shift, 1.0, rows),
        "y": rng.lognormal(0.0, 0.5, rows),
        "z": rng.uniform(0, 10, rows),
        "c": rng.choice(["a", "b", "c", "d"], rows, p=[0.5, 0.3, 0.15, 0.05]).astype(object),
    })  # fmt: skip
    if c_new:
        frame.loc[rng.random(rows) < c_new, "c"] = "new"
    if y_missing:
        frame.loc[rng.random(rows) < y_missing, "y"] = np.nan
    return frame


def synthetic_profile(rows: int, seed: int = 0) -> dict[str, Any]:
    """The profile our own evaluate stage builds, from ``rows`` synthetic training rows."""
    frame = synthetic(rows, np.random.default_rng(seed))
    values = (frame["x"] + frame["z"]).to_numpy()
    return build_profile(frame, SCHEMA, Prediction(values=values), [], 10)


def judge(profile: dict[str, Any], frame: pd.DataFrame, settings: DriftSettings | None = None) -> Any:
    columns = {
        c: (frame[c].to_numpy(dtype=np.float64) if c != "c" else frame[c].fillna("").to_numpy(dtype=object))
        for c in "xyzc"
    }
    return detect_drift(profile, columns, values=(frame["x"] + frame["z"]).to_numpy(), settings=settings)


def bc_window(bc: Project, frame: pd.DataFrame) -> Any:
    records = predict_records(bc.artifact, frame, batch=7)
    return build_window(records, bc.manifest["schema"]["features"], "classification")


def bc_drift(bc: Project, frame: pd.DataFrame, settings: DriftSettings | None = None) -> Any:
    profile = pd.read_json(bc.artifact / "profile.json", typ="series").to_dict()
    w = bc_window(bc, frame)
    return detect_drift(profile, w.columns, labels=w.labels, probabilities=w.probabilities, settings=settings)


def test_holdout_traffic_is_not_drift(bc: Project) -> None:
    report = bc_drift(bc, bc.holdout)
    assert report.status == "ok", report.message
    assert report.drifted_features == [] and not report.prediction_drift
    # every feature got a distribution and a missing-rate test, plus the prediction tests
    names = {(t.name, t.kind) for t in report.tests}
    assert {(f["name"], "distribution") for f in bc.manifest["schema"]["features"]} <= names
    assert ("prediction:label", "prediction") in names and ("prediction:p(malignant)", "prediction") in names


def test_seeded_holdout_windows_rarely_alarm(bc: Project) -> None:
    """20 seeded 100-row windows of real holdout rows through the real model: at most one false alarm."""
    profile = pd.read_json(bc.artifact / "profile.json", typ="series").to_dict()
    features = bc.manifest["schema"]["features"]
    records = predict_records(bc.artifact, bc.holdout, batch=1)
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(20):
        chosen = [records[i] for i in sorted(rng.choice(len(records), 100, replace=False))]
        w = build_window(chosen, features, "classification")
        alarms += (
            detect_drift(profile, w.columns, labels=w.labels, probabilities=w.probabilities).status == "drift"
        )
    assert alarms <= 1


def test_false_alarm_rate_on_fresh_samples_is_at_most_alpha() -> None:
    """200 seeded windows drawn from the training distribution: corrected drift verdicts stay near alpha."""
    profile = synthetic_profile(4000)
    rng = np.random.default_rng(123)
    flagged = raw_any = 0
    trials = 200
    for _ in range(trials):
        report = judge(profile, synthetic(1000, rng))
        flagged += report.status == "drift"
        raw_any += any(t.p_value is not None and t.p_value < 0.05 for t in report.tests)
    assert flagged / trials <= 0.06
    # Without the correction, "any of ~10 tests below alpha" fires far more often: the correction matters.
    assert raw_any / trials > 2 * max(flagged / trials, 0.05)


def test_goodness_of_fit_against_a_small_profile_would_false_alarm() -> None:
    """Why the homogeneity test: treating a 400-row profile as exact flags big windows of unchanged traffic."""
    rng = np.random.default_rng(5)
    gof = homogeneity = 0
    trials = 30
    for seed in range(trials):
        profile = synthetic_profile(400, seed=seed)
        exact = {**profile, "rows": None, "prediction": {**profile["prediction"], "rows": None}}  # no row count: goodness of fit
        gof += judge(exact, synthetic(20_000, rng), DriftSettings(psi_threshold=0.0)).status == "drift"
        homogeneity += (
            judge(profile, synthetic(20_000, rng), DriftSettings(psi_threshold=0.0)).status == "drift"
        )
    assert gof / trials >= 0.8
    assert homogeneity / trials <= 0.17


def test_shifted_features_are_detected_and_named(bc: Project) -> None:
    moved = ["mean_radius", "worst_texture", "area_error"]
    report = bc_drift(bc, shifted(bc.holdout, moved, shift_sd=1.0))
    assert report.status == "drift"
    assert report.drifted_features == sorted(moved)
    for t in report.tests:
        if t.name in moved and t.kind == "distribution":
            assert t.p_adjusted is not None and t.p_adjusted < 0.05 and t.psi is not None and t.psi >= 0.1
            assert t.p_adjusted >= t.p_value  # the corrected p-value is reported next to the raw one


def test_scaled_feature_is_detected(bc: Project) -> None:
    report = bc_drift(bc, shifted(bc.holdout, ["mean_texture"], scale=1.8))
    assert report.drifted_features == ["mean_texture"]


def test_small_window_gets_no_verdict(bc: Project) -> None:
    report = bc_drift(bc, shifted(bc.holdout.head(40), ["mean_radius"], shift_sd=5.0))
    assert report.status == "insufficient"
    assert report.message == "need ≥ 100 rows for a drift verdict, got 40"
    assert report.tests == [] and report.drifted_features == []


def test_trivial_shift_in_a_huge_window_is_significant_but_not_drift() -> None:
    profile = synthetic_profile(200_000, seed=2)
    report = judge(profile, synthetic(200_000, np.random.default_rng(9), x_shift=0.05))
    x = next(t for t in report.tests if t.name == "x" and t.kind == "distribution")
    assert x.p_adjusted is not None and x.p_adjusted < 1e-6  # a real, tiny shift: significant
    assert x.psi is not None and x.psi < 0.01 and not x.drifted  # ...but far below the effect threshold
    assert report.status == "ok"
    big = judge(profile, synthetic(200_000, np.random.default_rng(9), x_shift=0.5))
    assert big.drifted_features == ["x"]


def test_unseen_categories_count_as_other_and_missing_rate_is_tested() -> None:
    profile = synthetic_profile(4000)
    report = judge(profile, synthetic(2000, np.random.default_rng(3), c_new=0.2, y_missing=0.3))
    assert report.drifted_features == ["c", "y"]
    y_missing = next(t for t in report.tests if t.name == "y" and t.kind == "missing")
    assert y_missing.drifted and y_missing.effect == pytest.approx(0.3, abs=0.03)
    y_dist = next(t for t in report.tests if t.name == "y" and t.kind == "distribution")
    assert not y_dist.drifted  # the present values of y are unchanged


def test_sparse_bins_are_pooled_to_five_expected() -> None:
    observed = np.array([0, 1, 2, 40, 50, 3, 1, 0])
    reference = np.array([0.01, 0.01, 0.02, 0.4, 0.5, 0.03, 0.02, 0.01])
    _, p, _, _, bins = compare_counts(observed, reference, None, ordered=True)
    assert bins == 3 and p is not None  # [0..3], [4], [5..7] each have ≥ 5 expected
    _, _, _, _, bins = compare_counts(np.array([97, 3]), np.array([0.99, 0.01]), None, ordered=False)
    assert bins == 1  # one bin left: nothing to test


def test_corrections_match_their_definitions() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2])
    assert np.allclose(adjust_p_values(p, "bh"), stats.false_discovery_control(p, method="bh"))
    assert np.allclose(adjust_p_values(p, "holm"), [0.04, 0.09, 0.09, 0.2])
    assert np.allclose(adjust_p_values(p, "none"), p)


def test_bad_settings_and_missing_columns_are_refused() -> None:
    with pytest.raises(MonitorError, match="correction is 'bonferroni'"):
        DriftSettings(correction="bonferroni")
    with pytest.raises(MonitorError, match="no column for c"):
        detect_drift(synthetic_profile(500), {"x": np.zeros(200), "y": np.zeros(200), "z": np.zeros(200)})
