"""The gate's statistics against scikit-learn/scipy references: weighted metrics, McNemar, paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from mlci.model.stats import bootstrap_weights, mcnemar, paired_bootstrap, weighted_metric

rng = np.random.default_rng(0)
N = 400
Y = rng.choice(["a", "b"], N)
P1 = np.clip(np.where(Y == "b", 0.65, 0.35) + rng.normal(0, 0.2, N), 0.01, 0.99).round(2)  # rounding makes ties
PROBS = np.column_stack([1 - P1, P1])
LABELS = np.where(P1 > 0.5, "b", "a")
Y3 = rng.choice(["x", "y", "z"], N)
LABELS3 = np.where(rng.random(N) < 0.7, Y3, rng.choice(["x", "y", "z"], N))
YR = rng.normal(10, 3, N)
VALUES = YR + rng.normal(0, 1, N)


@pytest.mark.parametrize("seed", [1, 2])
def test_weighted_metrics_match_sklearn_sample_weight(seed: int) -> None:
    w = np.random.default_rng(seed).integers(0, 4, N).astype(float)
    W = w[None, :] * (N / w.sum())  # rows of the bootstrap matrix sum to n
    cases = [
        ("accuracy", dict(labels=LABELS), skm.accuracy_score(Y, LABELS, sample_weight=w)),
        ("f1", dict(labels=LABELS, classes=["a", "b"]), skm.f1_score(Y, LABELS, pos_label="b", sample_weight=w)),
        ("roc_auc", dict(probabilities=PROBS, classes=["a", "b"]), skm.roc_auc_score(Y == "b", P1, sample_weight=w)),
        ("log_loss", dict(probabilities=PROBS, classes=["a", "b"]), skm.log_loss(Y, PROBS, labels=["a", "b"], sample_weight=w)),
    ]
    for name, kwargs, expected in cases:
        got = weighted_metric(name, Y, **kwargs)(W)[0]
        assert got == pytest.approx(expected, rel=1e-9), name
    macro = weighted_metric("f1", Y3, labels=LABELS3, classes=["x", "y", "z"])(W)[0]
    assert macro == pytest.approx(skm.f1_score(Y3, LABELS3, average="macro", sample_weight=w), rel=1e-9)
    for name, expected in [
        ("rmse", np.sqrt(skm.mean_squared_error(YR, VALUES, sample_weight=w))),
        ("mae", skm.mean_absolute_error(YR, VALUES, sample_weight=w)),
        ("r2", skm.r2_score(YR, VALUES, sample_weight=w)),
    ]:
        assert weighted_metric(name, YR, values=VALUES)(W)[0] == pytest.approx(expected, rel=1e-9), name


def test_unknown_metric_for_task_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be compared"):
        weighted_metric("rmse", Y, labels=LABELS)


def test_bootstrap_weights_are_resamples() -> None:
    W = bootstrap_weights(50, 200, seed=3)
    assert W.shape == (200, 50) and (W.sum(axis=1) == 50).all()
    assert np.array_equal(W, bootstrap_weights(50, 200, seed=3))
    assert not np.array_equal(W, bootstrap_weights(50, 200, seed=4))


def test_mcnemar_matches_scipy_binomtest() -> None:
    cand = np.array([True] * 80 + [False] * 15 + [True] * 5)
    prod = np.array([True] * 80 + [True] * 15 + [False] * 5)
    test = mcnemar(cand, prod)
    assert (test.candidate_only_wrong, test.candidate_only_right) == (15, 5)
    assert test.p_worse == pytest.approx(sps.binomtest(15, 20, 0.5, alternative="greater").pvalue)
    assert test.p_worse < 0.05 < test.p_better
    assert mcnemar(cand, cand).p_worse == 1.0


def test_paired_bootstrap_identical_models_straddle_zero() -> None:
    fn = weighted_metric("roc_auc", Y, probabilities=PROBS, classes=["a", "b"])
    interval = paired_bootstrap("roc_auc", fn, fn, bootstrap_weights(N, 300, 0), 0.05)
    assert interval.improvement == 0 and interval.low == 0 and interval.high == 0


def test_paired_bootstrap_sees_a_worse_model_and_orients_lower_is_better() -> None:
    W = bootstrap_weights(N, 500, 0)
    good = weighted_metric("rmse", YR, values=VALUES)
    bad = weighted_metric("rmse", YR, values=YR + rng.normal(0, 2, N))
    interval = paired_bootstrap("rmse", bad, good, W, 0.05)
    assert interval.candidate > interval.production
    assert interval.improvement < 0 and interval.high < 0  # worse with confidence
    flipped = paired_bootstrap("rmse", good, bad, W, 0.05)
    assert flipped.low > 0
