"""The gate's weighted ROC AUC, fast and bit for bit the grouped route before it (issue 13's leftover).

A constant score (the trivial baseline) has AUC 0.5 without a sort; every other score vector is sorted
once (not per call) and its AUC summed over the positives from a cumulative sum of the negatives. The
reference is ``reference_auc`` below: the grouped weighted AUC as model/stats.py had it, verbatim.
Correctness only: the speed is bench/bench_gate.py's business.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlci.model.stats as stats


def reference_auc(W: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The weighted ROC AUC as model/stats.py computed it before the shortcuts (verbatim)."""
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    Ws = W[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    neg_w = np.add.reduceat(Ws * ~pos, starts, axis=1)
    pos_w = np.add.reduceat(Ws * pos, starts, axis=1)
    neg_before = np.cumsum(neg_w, axis=1) - neg_w
    numerator = np.sum(pos_w * (neg_before + 0.5 * neg_w), axis=1)
    denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


RNG = np.random.default_rng(5)
N = 300
POSITIVE = RNG.random(N) < 0.4


def weight_matrices() -> dict[str, np.ndarray]:
    """Bootstrap counts, ones, real-valued weights, and rows that hold no positive (or no negative)."""
    real = RNG.random((40, N))
    real[0, POSITIVE] = 0.0  # no positive weighted: NaN
    real[1, ~POSITIVE] = 0.0  # no negative weighted: NaN
    counts = stats.bootstrap_weights(N, 60, 2)
    counts[0, POSITIVE] = 0.0
    return {"counts": counts, "ones": np.ones((1, N)), "real": real}


@pytest.mark.parametrize("weights", ["counts", "ones", "real"])
@pytest.mark.parametrize("constant", [0.37, 1.0, np.float32(0.2)])
def test_a_constant_score_has_auc_one_half_bit_for_bit(weights: str, constant: float) -> None:
    W = weight_matrices()[weights]
    scores = np.full(N, constant)
    expected = reference_auc(W, POSITIVE, scores)
    got = stats._weighted_auc(W, POSITIVE, scores)
    assert np.array_equal(got, expected, equal_nan=True), (got[:5], expected[:5])
    assert set(np.unique(got[np.isfinite(got)])) == {0.5}
    if weights != "ones":
        assert np.isnan(got[0])


SCORES = {
    "continuous": RNG.random(N),
    "ties": RNG.random(N).round(1),
    "float32": RNG.random(N).astype(np.float32),
    "separating": np.where(POSITIVE, 0.9, 0.1),
}


@pytest.mark.parametrize("weights", ["counts", "ones"])
@pytest.mark.parametrize("scores", sorted(SCORES))
def test_the_sorted_auc_equals_the_grouped_auc_bit_for_bit_on_counts(weights: str, scores: str) -> None:
    """Count weights (what the gate uses): every partial sum is exact, so the results are identical."""
    W = weight_matrices()[weights]
    expected = reference_auc(W, POSITIVE, SCORES[scores])
    got = stats._weighted_auc(W, POSITIVE, SCORES[scores])
    assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("scores", sorted(SCORES))
def test_the_sorted_auc_agrees_to_rounding_on_real_weights(scores: str) -> None:
    W = weight_matrices()["real"]
    expected = reference_auc(W, POSITIVE, SCORES[scores])
    got = stats._weighted_auc(W, POSITIVE, SCORES[scores])
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("positives", [0, N])
def test_no_positive_or_no_negative_row_gives_nan(positives: int) -> None:
    positive = np.arange(N) < positives
    W = weight_matrices()["counts"]
    assert np.isnan(stats._weighted_auc(W, positive, SCORES["ties"])).all()
    assert np.array_equal(stats._weighted_auc(W, positive, SCORES["ties"]), reference_auc(W, positive, SCORES["ties"]), equal_nan=True)


def test_nan_scores_take_the_grouped_route() -> None:
    scores = SCORES["ties"].copy()
    scores[::7] = np.nan
    W = weight_matrices()["counts"]
    assert np.array_equal(stats._weighted_auc(W, POSITIVE, scores), reference_auc(W, POSITIVE, scores), equal_nan=True)


def test_weighted_metric_roc_auc_matches_the_reference_for_three_classes() -> None:
    """Multiclass: the mean over the classes of one-vs-rest AUCs, each class's vector sorted once."""
    y = RNG.choice(["a", "b", "c"], N)
    probabilities = RNG.dirichlet(np.ones(3), N).round(2)
    probabilities[:, 2] = 1 / 3  # one constant column: the shortcut inside the mean
    W = weight_matrices()["counts"]
    got = stats.weighted_metric("roc_auc", y, probabilities=probabilities, classes=["a", "b", "c"])(W)
    expected = np.nanmean([reference_auc(W, y == c, probabilities[:, i]) for i, c in enumerate("abc")], axis=0)
    assert np.array_equal(got, expected)
