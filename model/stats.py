"""Paired comparisons of two models on the same rows (McNemar's exact test, a vectorised paired bootstrap),
and the binning that the monitoring profile and the monitor's drift tests share.

The bootstrap draws one set of resamples and applies it to both models, so the interval is for the
*difference* on the same rows (far tighter than comparing two independent intervals). Each resample is
a vector of row weights; every metric below is written as a weighted metric, so 1000 resamples of
10,000 rows are a handful of matrix products instead of 1000 Python loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "HIGHER_IS_BETTER",
    "McNemar",
    "PROFILE_VERSION",
    "PairedInterval",
    "bin_counts",
    "bin_edges",
    "binned_values",
    "bootstrap_weights",
    "mcnemar",
    "paired_bootstrap",
    "weighted_metric",
]

# profile.json's schema_version. 3: no measurements (baseline_metrics, the held-out outlier rate and
# rows): they are the manifest's evidence, outside the digest. 2: bin edges stored exactly and placed
# between distinct training values.
# 1: edges rounded to 9 significant digits, which moves a point mass sitting on an edge into the
# neighbouring bin (the monitor snaps such edges back to float32: see mlci.monitor.drift).
PROFILE_VERSION = 3
EXACT_EDGES_VERSION = 2  # the first profile version with exact bin edges

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "roc_auc": True, "r2": True, "log_loss": False, "rmse": False, "mae": False}


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs and one-sided exact p-values (binomial on the discordant pairs)."""

    candidate_only_wrong: int
    candidate_only_right: int
    p_worse: float
    p_better: float


def mcnemar(candidate_correct: np.ndarray, production_correct: np.ndarray) -> McNemar:
    """Exact McNemar test: is the candidate wrong on more of the rows where the two disagree than chance allows?"""
    b = int(np.sum(~candidate_correct & production_correct))
    c = int(np.sum(candidate_correct & ~production_correct))
    if b + c == 0:
        return McNemar(b, c, 1.0, 1.0)
    p_worse = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
    p_better = stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue
    return McNemar(b, c, float(p_worse), float(p_better))


def bootstrap_weights(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) float matrix: how often each row is drawn in each resample (rows sum to n).

    Counted one resample at a time into the float matrix (no (samples, n) int64 intermediates: a third
    of the memory traffic). The draws are int32 when ``n`` fits: numpy draws any range below 2**32 with
    its 32-bit bounded generator whatever the dtype, so the draws, hence the weights, are the same.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n), dtype=np.int32 if n <= 2**31 else np.int64)
    weights = np.empty((samples, n))
    for row, drawn in zip(weights, draws, strict=True):
        row[:] = np.bincount(drawn, minlength=n)
    return weights


def _weighted_auc_grouped(W: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC under each weight vector (Mann-Whitney with ties counted half), by groups of equal scores.

    The general route: any weights, any scores (NaN included, each NaN its own group after every number).
    """
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    Ws = W[:, order]
    # Group equal scores: ties between a positive and a negative count one half.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    neg_w = np.add.reduceat(Ws * ~pos, starts, axis=1)
    pos_w = np.add.reduceat(Ws * pos, starts, axis=1)
    neg_before = np.cumsum(neg_w, axis=1) - neg_w
    numerator = np.sum(pos_w * (neg_before + 0.5 * neg_w), axis=1)
    denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _constant_auc(W: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of a constant score: every positive/negative pair is a tie, so 0.5 wherever the weights hold
    both a positive and a negative, NaN elsewhere; two matrix-vector products instead of a sort.

    Bit for bit what ``_weighted_auc_grouped`` gives: one group, ``neg_before`` is exactly 0 and
    ``p * (0.5 * q) / (p * q)`` is exactly 0.5 (halving is exact in binary floating point).
    """
    pos_w = W @ positive.astype(np.float64)
    neg_w = W @ (~positive).astype(np.float64)
    return np.where(pos_w * neg_w > 0, 0.5, np.nan)


@dataclass(frozen=True)
class _AucPlan:
    """The sort of one score vector, done once and applied to any weight matrix (``weighted_metric``).

    ``negatives`` are the negative rows in score order, ``positives`` the positive rows; ``below[i]`` /
    ``upto[i]`` count the negatives scored strictly below / at most positive ``i``'s score (searchsorted).
    """

    negatives: np.ndarray
    positives: np.ndarray
    below: np.ndarray
    upto: np.ndarray

    @classmethod
    def of(cls, positive: np.ndarray, scores: np.ndarray) -> _AucPlan:
        """Sort the negatives' scores once and place every positive among them."""
        negatives = np.flatnonzero(~positive)
        negatives = negatives[np.argsort(scores[negatives], kind="mergesort")]
        positives = np.flatnonzero(positive)
        ordered = scores[negatives]
        below = np.searchsorted(ordered, scores[positives], side="left")
        upto = np.searchsorted(ordered, scores[positives], side="right")
        return cls(negatives, positives, below, upto)

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """AUC per weight row: sum over positives of w * (negatives below + half the tied ones), over P * N.

        With count weights (bootstrap_weights, or ones) every partial sum is an integer or a half-integer far
        below 2**53, so each is exact and the result is bit for bit the grouped route's; other weights agree
        to rounding.
        """
        k = self.negatives.size
        Ws = np.take(W, np.concatenate([self.negatives, self.positives]), axis=1)  # one gather: negatives, positives
        cum = np.zeros((W.shape[0], k + 1))
        np.cumsum(Ws[:, :k], axis=1, out=cum[:, 1:])
        Wp = Ws[:, k:]
        if np.array_equal(self.below, self.upto):  # no positive tied with a negative
            numerator = np.einsum("ij,ij->i", Wp, np.take(cum, self.below, axis=1))
        else:
            tied = np.take(cum, self.below, axis=1) + np.take(cum, self.upto, axis=1)
            numerator = 0.5 * np.einsum("ij,ij->i", Wp, tied)
        denominator = Wp.sum(axis=1) * cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / denominator, np.nan)


def _auc_of(positive: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """W -> ROC AUC per weight row, prepared once per score vector: the constant shortcut, the sorted plan,
    or (NaN scores) the grouped route."""
    if scores.size and np.all(scores == scores[0]):
        return lambda W: _constant_auc(W, positive)
    if np.isnan(scores).any():
        return lambda W: _weighted_auc_grouped(W, positive, scores)
    return _AucPlan.of(positive, scores)


def _weighted_auc(W: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC under each weight vector (Mann-Whitney with ties counted half)."""
    return _auc_of(positive, scores)(W)


def _weighted_f1(W: np.ndarray, y: np.ndarray, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    scores = []
    # Binary: F1 of the last class (the positive one, as in evaluate); multiclass: macro average.
    for cls in classes[-1:] if len(classes) == 2 else classes:
        tp = W @ ((labels == cls) & (y == cls))
        fp = W @ ((labels == cls) & (y != cls))
        fn = W @ ((labels != cls) & (y == cls))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
    return np.mean(scores, axis=0)


def weighted_metric(
    name: str, y: np.ndarray, *, labels: np.ndarray | None = None, probabilities: np.ndarray | None = None,
    values: np.ndarray | None = None, classes: list[str] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function W -> metric per weight row, for the metrics the gate compares."""
    n = len(y)
    if name == "accuracy" and labels is not None:
        correct = (labels == y).astype(np.float64)
        return lambda W: (W @ correct) / n
    if name == "f1" and labels is not None and classes is not None:
        return lambda W: _weighted_f1(W, y, labels, classes)
    if name == "roc_auc" and probabilities is not None and classes is not None:
        if len(classes) == 2:
            return _auc_of(y == classes[1], probabilities[:, 1])
        per_class = [_auc_of(y == c, probabilities[:, i]) for i, c in enumerate(classes)]
        return lambda W: np.nanmean([auc(W) for auc in per_class], axis=0)
    if name == "log_loss" and probabilities is not None and classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        p = np.clip(probabilities[np.arange(n), [index[v] for v in y]], 1e-15, 1.0)
        loss = -np.log(p)
        return lambda W: (W @ loss) / n
    if values is not None:
        yf = y.astype(np.float64)
        err = values - yf
        if name == "rmse":
            return lambda W: np.sqrt((W @ err**2) / n)
        if name == "mae":
            return lambda W: (W @ np.abs(err)) / n
        if name == "r2":
            def r2(W: np.ndarray) -> np.ndarray:
                mean = (W @ yf) / n
                total = np.sum(W * (yf[None, :] - mean[:, None]) ** 2, axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return 1.0 - (W @ err**2) / total
            return r2
    raise ValueError(f"metric {name!r} cannot be compared for this task; comparable: {sorted(HIGHER_IS_BETTER)}")


@dataclass(frozen=True)
class PairedInterval:
    """Candidate minus production, oriented so that positive = the candidate is better."""

    metric: str
    candidate: float
    production: float
    improvement: float
    low: float
    high: float
    confidence: float
    samples: int


def paired_bootstrap(
    metric: str,
    candidate: Callable[[np.ndarray], np.ndarray],
    production: Callable[[np.ndarray], np.ndarray],
    weights: np.ndarray,
    alpha: float,
    candidate_resampled: np.ndarray | None = None,
) -> PairedInterval:
    """Percentile interval of the improvement over the shared resamples (two-sided, level 1 - alpha).

    ``candidate_resampled`` is ``candidate(weights)`` when the caller already has it (the gate's two
    comparisons share it when they use the same rows and resamples).
    """
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ones = np.ones((1, weights.shape[1]))
    cand_point, prod_point = float(candidate(ones)[0]), float(production(ones)[0])
    if candidate_resampled is None:
        candidate_resampled = candidate(weights)
    diffs = sign * (candidate_resampled - production(weights))
    diffs = diffs[np.isfinite(diffs)]
    low, high = (np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if diffs.size else (np.nan, np.nan))
    return PairedInterval(
        metric, cand_point, prod_point, sign * (cand_point - prod_point), float(low), float(high), 1 - alpha, int(diffs.size)
    )


def binned_values(values: np.ndarray) -> np.ndarray:
    """``values`` as every bin comparison sees them: rounded to float32 (what the served model reads) and
    held as float64. Training rows are float32 already (model/data.py); a JSON client's decimal ``20.1``
    becomes the same float32 the training row holds, so equal values always compare equal."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges of (at most) ``bins`` quantile bins of ``values``, none of them equal to a value.

    Each quantile cut ``q`` splits the values into ``< q`` and ``>= q`` (``np.searchsorted(side="right")``
    puts a value equal to an edge above it); the edge is moved to the midpoint between the largest value
    below the cut and the smallest at or above it, which splits the training values identically but puts
    every point mass (tenths, counts, ratings) strictly inside a bin. A value that equals a training
    value can then never land on the other side of an edge, whatever rounding a reader applies to the
    edge, and a cut at the minimum (an empty bin below it) or a repeated cut disappears. Stored with
    ``float`` (JSON's shortest round-trip form), the edges read back bit for bit. A constant gets two
    edges half a float32 step either side of it, so a production value above or below it is a change.
    """
    present = binned_values(values)
    present = present[~np.isnan(present)]
    distinct = np.unique(present)
    if distinct.size == 0:
        return np.empty(0)
    if distinct.size == 1:  # a constant: bins below, at and above it, so a move either way is a change
        value = np.float32(distinct[0])
        neighbours = np.nextafter(value, np.array([-np.inf, np.inf], dtype=np.float32)).astype(np.float64)
        return (neighbours + float(value)) / 2
    cuts = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    upper = np.searchsorted(distinct, cuts, side="left")  # the smallest value >= cut
    upper = np.unique(upper[(upper > 0) & (upper < distinct.size)])
    low, high = distinct[upper - 1], distinct[upper]
    middle = low + (high - low) / 2
    return np.where(middle > low, middle, high)  # neighbours one float64 apart: the upper one is the edge


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``values`` fall in each of the ``len(edges) + 1`` bins (a value equal to an edge goes above)."""
    edges = np.asarray(edges, dtype=np.float64)
    return np.bincount(np.searchsorted(edges, binned_values(values), side="right"), minlength=len(edges) + 1)
