"""Outliers: the artifact's IsolationForest (outlier.onnx) on the window's rows, vs the reference outlier rate.

The detector sits behind the same imputation and encoding as the model, so it takes the window's
columns as the model would (one [N, 1] input per feature: FP32 numeric with NaN for missing, strings
for categories). A row is an outlier when its score is below the profile's ``score_threshold``: the
``[evaluate] outlier_quantile`` quantile (default 1 %) of the scores of the training rows, calibrated
by the evaluate stage on the fitted forest (scikit-learn's scores, which outlier.onnx reproduces in
float32: the threshold is identity, so it does not come from onnxruntime's CPU-chosen kernels). Artifacts from before the calibration have no
threshold; their rows are flagged by the model's own label (contamination "auto", which flagged 11 %
to 49 % of normal rows).

The window's rate is compared with the profile's ``holdout_outlier_rate``, measured on held-out rows
of the training distribution (older artifacts may only have ``train_outlier_rate``, measured on the
rows the forest was fitted on, which look less anomalous to it), by a one-sided binomial test; a rise
is reported only when it is significant *and* at least ``min_increase`` (default 10 points) above the
reference. The message names the rate it compares with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["OutlierDetector", "OutlierReference", "OutlierReport", "outlier_reference", "outlier_test"]


@dataclass(frozen=True)
class OutlierReference:
    """What the monitor compares a window with, from the profile's ``outlier`` entry."""

    threshold: float | None  # a score below it is an outlier; None: the model's own label (older artifacts)
    rate: float  # the expected outlier rate of normal traffic
    source: str  # the rows ``rate`` was measured on: "held-out rows" or "training rows"


def outlier_reference(profile: Mapping[str, Any]) -> OutlierReference:
    """The threshold and reference rate the profile records (held-out rate when there is one)."""
    outlier = profile.get("outlier", {})
    threshold = outlier.get("score_threshold")
    if outlier.get("holdout_outlier_rate") is not None:
        rate, source = float(outlier["holdout_outlier_rate"]), "held-out rows"
    else:
        rate, source = float(outlier.get("train_outlier_rate") or 0.0), "training rows"
    return OutlierReference(None if threshold is None else float(threshold), rate, source)


@dataclass(frozen=True)
class OutlierReport:
    """Outlier rate of a window vs the reference rate (measured at training on ``reference``)."""

    status: str
    rows: int
    outliers: int
    rate: float
    reference_rate: float
    reference: str
    p_value: float | None
    min_increase: float
    score_median: float | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class OutlierDetector:
    """outlier.onnx loaded once with onnxruntime; :meth:`score` runs it on window columns.

    ``threshold``: the profile's calibrated ``score_threshold`` (rows scoring below it are outliers);
    None keeps the model's own label output, for artifacts without one."""

    def __init__(
        self, model: Path | bytes, features: Sequence[Mapping[str, str]], threshold: float | None = None
    ) -> None:
        from mlci.model.onnxio import open_session

        self.session_ = open_session(model)
        self.features = list(features)
        self.threshold = threshold
        self.input_names_ = [i.name for i in self.session_.get_inputs()]

    def score(self, columns: Mapping[str, np.ndarray], batch: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
        """(is_outlier bool array, score array; lower = more anomalous) for every row."""
        n = len(next(iter(columns.values()))) if columns else 0
        flags, scores = [], []
        for start in range(0, n, batch):
            feeds: dict[str, np.ndarray] = {}
            for f in self.features:
                part = columns[f["name"]][start : start + batch]
                if f["kind"] == "numeric":
                    feeds[f["name"]] = np.asarray(part, dtype=np.float32).reshape(-1, 1)
                else:
                    feeds[f["name"]] = np.asarray(part, dtype=str).astype(object).reshape(-1, 1)
            label, score = self.session_.run(None, {k: feeds[k] for k in self.input_names_})[:2]
            score = np.asarray(score, dtype=np.float64).ravel()
            flags.append(
                np.asarray(label).ravel() == -1 if self.threshold is None else score < self.threshold
            )
            scores.append(score)
        if not flags:
            return np.zeros(0, dtype=bool), np.zeros(0)
        return np.concatenate(flags), np.concatenate(scores)


def outlier_test(
    flags: np.ndarray,
    reference_rate: float,
    *,
    reference: str = "held-out rows",
    alpha: float = 0.05,
    min_increase: float = 0.10,
    min_rows: int = 100,
    scores: np.ndarray | None = None,
) -> OutlierReport:
    """One-sided binomial test of the window's outlier rate against ``reference_rate`` (measured on ``reference``)."""
    n = len(flags)
    k = int(np.sum(flags))
    rate = k / n if n else 0.0
    median = float(np.median(scores)) if scores is not None and len(scores) else None
    if n < min_rows:
        message = f"need ≥ {min_rows} rows for an outlier verdict, got {n}"
        return OutlierReport(
            "insufficient", n, k, rate, reference_rate, reference, None, min_increase, median, message
        )
    p = float(stats.binomtest(k, n, min(max(reference_rate, 1e-9), 1 - 1e-9), alternative="greater").pvalue)
    risen = p < alpha and rate - reference_rate >= min_increase
    message = (
        f"outlier rate {rate:.3f} in this window vs {reference_rate:.3f} on {reference} at training "
        f"(p={p:.3g}, one-sided binomial)"
    )
    status = "outliers" if risen else "ok"
    return OutlierReport(status, n, k, rate, reference_rate, reference, p, min_increase, median, message)
