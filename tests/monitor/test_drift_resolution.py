"""Coarse-resolution features (tenths, small integers, ratings) put point masses on the profile's bin edges.

The profile is built by our own evaluate stage (``build_profile``), stored as the artifact stores it
(``canonical_json``, then ``json.loads`` as the monitor reads ``profile.json``), and windows of *unchanged*
traffic are judged by ``detect_drift``. Production values arrive in two forms and both are tested: the
float32 matrix the server logs (``numeric`` packed as ``<f4``) and the decimal float64 a JSON client sends
(the list form of the log).

The bound on false alarms is computed, not guessed: each window's verdict is meant to false-alarm with
probability at most ``alpha``, so over ``K`` windows the count of alarms is at most Binomial(K, alpha); the
test fails when the count exceeds that distribution's 99.9 % quantile (a correct detector fails this test
with probability below 0.1 %, and the seeds are fixed, so it is deterministic).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlci.canonical import canonical_json
from mlci.model.data import Feature, Schema
from mlci.model.evaluate import build_profile
from mlci.model.onnxio import Prediction
from mlci.monitor.drift import OLD_PROFILE_NOTE, DriftSettings, compare_counts, detect_drift

KINDS = ("tenths", "integers", "ratings")
FEATURES = [f"{kind}_{i}" for kind in KINDS for i in range(4)]
SCHEMA = Schema(tuple(Feature(name, "numeric") for name in FEATURES), "t", "regression")


def coarse(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Correlated features (one shared factor) recorded coarsely: tenths, counts 0..~12, ratings 1..5.

    Values are decimal float64 as read from a CSV; ``_fp32`` in model/data.py rounds them to float32
    at load, so the training frame holds float32 values (as float64), as :func:`training_frame` does."""
    factor = rng.normal(size=rows)
    columns: dict[str, np.ndarray] = {}
    for i in range(4):
        noise = rng.normal(size=rows)
        latent = 0.7 * factor + 0.7 * noise
        # a temperature in tenths of a degree: 0.4 to 3 degrees spread, each tenth holding 1 to 8 % of the rows
        columns[f"tenths_{i}"] = np.round(20.0 + (0.4, 0.7, 1.2, 3.0)[i] * latent, 1)
        columns[f"integers_{i}"] = rng.poisson(np.exp(1.2 + 0.3 * latent)).astype(np.float64)
        columns[f"ratings_{i}"] = np.clip(np.round(3.2 + 1.1 * latent), 1, 5)
    return pd.DataFrame(columns)


def training_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """What load_data hands the evaluate stage: numeric features rounded to float32 and back."""
    return frame.astype("float32").astype("float64")


def model(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in regression model's float32 output (the served model computes in float32)."""
    return frame.to_numpy(np.float32) @ np.linspace(0.1, 1.0, frame.shape[1], dtype=np.float32)


def stored(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile as the monitor reads it: written by canonical_json (profile.json), parsed by json."""
    return json.loads(canonical_json(profile))


def reference_profile(rows: int, seed: int) -> dict[str, Any]:
    train = training_frame(coarse(rows, np.random.default_rng(seed)))
    profile = build_profile(
        train, SCHEMA, Prediction(values=model(train)), [], 10
    )
    return stored(profile)


def columns_of(frame: pd.DataFrame, form: str) -> dict[str, np.ndarray]:
    """The window's columns: the float32 the server logs, or the decimal float64 of a JSON client."""
    dtype = np.float32 if form == "float32" else np.float64
    return {c: frame[c].to_numpy(dtype).astype(np.float64) for c in frame.columns}


def alarm_bound(windows: int, alpha: float, level: float = 0.999) -> int:
    """Largest alarm count a detector with false-alarm probability alpha reaches with probability ``level``."""
    return int(stats.binom.ppf(level, windows, alpha))


def false_alarms(
    profile: dict[str, Any], n: int, windows: int, seed: int, form: str, settings: DriftSettings
) -> int:
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(windows):
        frame = coarse(n, rng)
        report = detect_drift(
            profile, columns_of(frame, form), values=model(frame).astype(np.float64), settings=settings
        )
        alarms += report.status == "drift"
    return alarms


@pytest.mark.parametrize("form", ["float32", "float64"])
@pytest.mark.parametrize("n", [200, 1000, 5000])
def test_unchanged_coarse_traffic_false_alarms_at_most_alpha(n: int, form: str) -> None:
    """Over 4 reference profiles x 25 windows each, drift verdicts on unchanged traffic stay within alpha."""
    settings = DriftSettings()
    windows_per_profile = 25
    profiles = [reference_profile(10_000, seed) for seed in range(4)]
    alarms = sum(
        false_alarms(p, n, windows_per_profile, 1000 + 17 * k + n, form, settings)
        for k, p in enumerate(profiles)
    )
    windows = windows_per_profile * len(profiles)
    bound = alarm_bound(windows, settings.alpha)
    assert alarms <= bound, (
        f"{alarms}/{windows} windows of unchanged traffic flagged drift (bound {bound} at alpha {settings.alpha})"
    )


def test_stored_edges_reproduce_the_stored_training_fractions() -> None:
    """Binning the training rows with the edges *as stored* gives back the stored fractions exactly."""
    rows = 10_000
    train = training_frame(coarse(rows, np.random.default_rng(7)))
    profile = reference_profile(rows, 7)
    for name in FEATURES:
        feature = profile["features"][name]
        columns = columns_of(train[[name]], "float64")
        report = detect_drift(
            {**profile, "features": {name: feature}, "prediction": {}},
            columns,
            settings=DriftSettings(min_rows=1),
        )
        test = next(t for t in report.tests if t.kind == "distribution")
        assert test.psi == pytest.approx(0.0, abs=1e-9), (
            f"{name}: PSI {test.psi} of the training rows against their own profile"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_equal_values_share_a_bin_and_edges_are_distinct(kind: str) -> None:
    """No stored edge equals a training value (a point mass cannot straddle it) and edges are strictly increasing."""
    train = training_frame(coarse(10_000, np.random.default_rng(3)))
    profile = reference_profile(10_000, 3)
    for name in [f for f in FEATURES if f.startswith(kind)]:
        edges = np.asarray(profile["features"][name]["edges"])
        assert np.all(np.diff(edges) > 0), f"{name}: edges {edges} are not strictly increasing"
        assert not np.isin(edges, train[name].to_numpy()).any(), (
            f"{name}: an edge of {edges} is a training value"
        )
    if kind == "ratings":  # five values, all common: every value its own bin
        assert len(profile["features"]["ratings_0"]["edges"]) == 4


def legacy(profile: dict[str, Any], train: pd.DataFrame, bins: int = 10) -> dict[str, Any]:
    """The profile an older mlci stored (schema_version 1): quantile cuts as edges, fractions counted with the
    exact cuts, the edges then written rounded to 9 significant digits (evaluate's ``_r``)."""
    features = {}
    for name, feature in profile["features"].items():
        present = train[name].dropna().to_numpy(np.float64)
        cuts = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(cuts, present, side="right"), minlength=len(cuts) + 1)
        features[name] = {
            **feature,
            "edges": [float(f"{c:.9g}") for c in cuts],
            "fractions": [float(f"{c / present.size:.9g}") for c in counts],
        }
    return stored({**profile, "schema_version": 1, "features": features, "prediction": {}})


def test_old_profiles_with_rounded_edges_still_load_snap_and_say_so() -> None:
    """A schema_version 1 profile.json (9-digit edges) in an existing artifact: judged with its edges snapped
    back to float32 (9 digits identify a float32 exactly), so unchanged traffic stays within alpha, and every
    verdict names the old profile and the way out."""
    settings = DriftSettings()
    alarms = windows = 0
    for seed in range(4):
        train = training_frame(coarse(10_000, np.random.default_rng(seed)))
        old = legacy(reference_profile(10_000, seed), train)
        rng = np.random.default_rng(500 + seed)
        for _ in range(10):
            frame = coarse(1000, rng)
            report = detect_drift(old, columns_of(frame, "float32"), settings=settings)
            assert OLD_PROFILE_NOTE in report.message
            alarms += report.status == "drift"
            windows += 1
    bound = alarm_bound(windows, settings.alpha)
    assert alarms <= bound, (
        f"{alarms}/{windows} windows of unchanged traffic flagged drift against an old profile"
    )


def test_new_profiles_carry_no_old_profile_note() -> None:
    frame = coarse(1000, np.random.default_rng(1))
    report = detect_drift(
        reference_profile(10_000, 1), columns_of(frame, "float32"), values=model(frame).astype(np.float64)
    )
    assert OLD_PROFILE_NOTE not in report.message and report.message.startswith(f"{len(report.tests)} tests")


def test_identical_distributions_have_zero_js_distance_not_nan() -> None:
    """Window counts proportional to the reference (a discrete feature's usual case): JS distance is 0."""
    counts = np.array(
        [1911.0, 1533.0, 810.0, 924.0, 123.0, 226.0, 50.0, 526.0, 2439.0]
    )  # sqrt of -1e-17 here
    _, p, psi, js, _ = compare_counts(counts, counts / counts.sum(), 10_000, ordered=True)
    assert (
        js == pytest.approx(0.0, abs=1e-6)
        and psi == pytest.approx(0.0, abs=1e-12)
        and p == pytest.approx(1.0)
    )


def test_a_constant_feature_gets_bins_either_side_of_its_value() -> None:
    """A feature that was constant in training (e.g. a sensor's fixed setting) and moves in production is
    drift; unchanged it is not. Its profile has three bins: below, at and above the value."""
    schema = Schema((Feature("setting", "numeric"),), "t", "regression")
    train = pd.DataFrame({"setting": np.full(2000, 3.0)})
    profile = stored(
        build_profile(train, schema, Prediction(values=np.zeros(2000, np.float32)), [], 10)
    )
    assert profile["features"]["setting"]["fractions"] == [0.0, 1.0, 0.0]
    for value, status in ((3.0, "ok"), (5.0, "drift"), (1.0, "drift")):
        report = detect_drift({**profile, "prediction": {}}, {"setting": np.full(500, value)})
        assert report.status == status, f"constant 3.0 in training, {value} in production: {report.message}"
