"""Outliers: the artifact's IsolationForest (outlier.onnx) on the window's rows, vs the reference outlier rate.

The detector sits behind the same imputation and encoding as the model, so it takes the window's
columns as the model would (one [N, 1] input per feature: FP32 numeric with NaN for missing, strings
for categories). The outlier rate is compared with the profile's ``holdout_outlier_rate`` (the rate on
unseen rows of the training distribution; older artifacts only have ``train_outlier_rate``, measured on
the rows the forest was fitted on, which look less anomalous to it: 0.113 vs 0.154 on the bundled
example) by a one-sided binomial test; a rise is reported only when it is significant *and* at least
``min_increase`` (default 10 points) above the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["OutlierDetector", "OutlierReport", "outlier_test"]


@dataclass(frozen=True)
class OutlierReport:
    """Outlier rate of a window vs the training rate."""

    status: str
    rows: int
    outliers: int
    rate: float
    train_rate: float
    p_value: float | None
    min_increase: float
    score_median: float | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class OutlierDetector:
    """outlier.onnx loaded once with onnxruntime; :meth:`score` runs it on window columns."""

    def __init__(self, model: Path | bytes, features: Sequence[Mapping[str, str]]) -> None:
        from mlci.model.onnxio import open_session

        self.session_ = open_session(model)
        self.features = list(features)
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
            flags.append(np.asarray(label).ravel() == -1)
            scores.append(np.asarray(score, dtype=np.float64).ravel())
        if not flags:
            return np.zeros(0, dtype=bool), np.zeros(0)
        return np.concatenate(flags), np.concatenate(scores)


def outlier_test(
    flags: np.ndarray,
    train_rate: float,
    *,
    alpha: float = 0.05,
    min_increase: float = 0.10,
    min_rows: int = 100,
    scores: np.ndarray | None = None,
) -> OutlierReport:
    """One-sided binomial test of the window's outlier rate against ``train_rate``."""
    n = len(flags)
    k = int(np.sum(flags))
    rate = k / n if n else 0.0
    median = float(np.median(scores)) if scores is not None and len(scores) else None
    if n < min_rows:
        return OutlierReport("insufficient", n, k, rate, train_rate, None, min_increase, median, f"need ≥ {min_rows} rows for an outlier verdict, got {n}")
    p = float(stats.binomtest(k, n, min(max(train_rate, 1e-9), 1 - 1e-9), alternative="greater").pvalue)
    risen = p < alpha and rate - train_rate >= min_increase
    message = f"outlier rate {rate:.3f} vs {train_rate:.3f} in training (p={p:.3g}, one-sided binomial)"
    return OutlierReport("outliers" if risen else "ok", n, k, rate, train_rate, p, min_increase, median, message)
