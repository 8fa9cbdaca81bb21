"""Concept drift / performance decay: delayed labels joined to logged predictions by request id.

Labels arrive as JSON Lines ``{"id": "<request id>", "labels": [...]}`` (one label per row of the
request) or as a CSV with columns ``id,label`` (optionally ``row``, the row within the request; rows
without it are taken in order). Both are read incrementally from a byte offset, complete lines only.

Classification: accuracy and F1 on the labelled rows; decay when a one-sided binomial test says the
accuracy is below the baseline (``scipy.stats.binomtest``) *and* the drop is at least ``margin``.
Regression: RMSE and MAE; decay when the lower end of a seeded bootstrap interval of the RMSE lies above
``baseline x (1 + margin)``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

from mlci.monitor.errors import MonitorError

__all__ = ["PerformanceReport", "evaluate_performance", "join_labels", "read_labels"]


@dataclass(frozen=True)
class PerformanceReport:
    """Metrics on the labelled rows vs the baseline; ``status`` is ``ok``, ``decay`` or ``insufficient``."""

    status: str
    rows: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    test: str
    p_value: float | None
    interval: tuple[float, float] | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def read_labels(path: Path, offset: int = 0) -> tuple[dict[str, list[Any]], int]:
    """Labels by request id from ``offset`` to the last complete line; returns them and the new offset."""
    if not path.is_file():
        raise MonitorError(f"Labels file '{path}' does not exist; pass --labels with a JSON Lines or CSV file.")
    with path.open("rb") as f:
        header = f.readline() if path.suffix.lower() == ".csv" else b""
        start = max(offset, len(header))
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1
    data = data[:end]
    out: dict[str, list[Any]] = {}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(header.decode() + data.decode()))
        if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
            raise MonitorError(f"'{path}' needs a header with 'id' and 'label' columns (and optionally 'row'); got {reader.fieldnames}.")
        rows: dict[str, dict[int, Any]] = {}
        for entry in reader:
            slot = rows.setdefault(entry["id"], {})
            slot[int(entry["row"]) if entry.get("row") not in (None, "") else len(slot)] = entry["label"]
        out = {k: [v[i] for i in sorted(v)] for k, v in rows.items()}
        return out, start + end
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MonitorError(f"'{path}' line {number} after byte {start} is not JSON ({exc}).") from exc
        if not isinstance(doc, dict) or "id" not in doc or not isinstance(doc.get("labels"), list):
            raise MonitorError(f"'{path}' line {number} after byte {start} must be {{\"id\": ..., \"labels\": [...]}}; got {line[:80]!r}.")
        out[str(doc["id"])] = doc["labels"]
    return out, start + end


def join_labels(
    labels: Mapping[str, Sequence[Any]], predictions: Mapping[str, Sequence[Any]]
) -> tuple[list[Any], list[Any], list[str]]:
    """(true, predicted, unmatched ids): rows whose request id has both a label and a logged prediction."""
    y_true: list[Any] = []
    y_pred: list[Any] = []
    unmatched: list[str] = []
    for request_id, values in labels.items():
        predicted = predictions.get(request_id)
        if predicted is None:
            unmatched.append(request_id)
            continue
        if len(predicted) != len(values):
            raise MonitorError(f"Request {request_id!r} has {len(predicted)} predicted row(s) but {len(values)} label(s).")
        y_true.extend(values)
        y_pred.extend(predicted)
    return y_true, y_pred, unmatched


def _f1(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> float:
    def one(c: str) -> float:
        tp = float(np.sum((p == c) & (y == c)))
        denom = float(np.sum(p == c) + np.sum(y == c))
        return 2 * tp / denom if denom else 0.0

    return one(classes[-1]) if len(classes) == 2 else float(np.mean([one(c) for c in classes]))


def evaluate_performance(
    task: str,
    baseline: Mapping[str, Any],
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    *,
    classes: Sequence[str] = (),
    alpha: float = 0.05,
    margin: float = 0.05,
    min_rows: int = 50,
    bootstrap: int = 1000,
    seed: int = 0,
) -> PerformanceReport:
    """Compare metrics on labelled rows with the baseline; see the module docstring."""
    n = len(y_true)
    if task == "classification":
        y = np.asarray([str(v) for v in y_true], dtype=object)
        p = np.asarray([str(v) for v in y_pred], dtype=object)
        base_acc = float(baseline["accuracy"])
        base = {"accuracy": base_acc, **({"f1": float(baseline["f1"])} if "f1" in baseline else {})}
        if n < min_rows:
            return PerformanceReport("insufficient", n, {}, base, "binomial", None, None, f"need ≥ {min_rows} labelled rows, got {n}")
        correct = int(np.sum(y == p))
        acc = correct / n
        metrics = {"accuracy": acc, "f1": _f1(y, p, list(classes) or sorted(set(y) | set(p)))}
        pval = float(stats.binomtest(correct, n, min(base_acc, 1 - 1e-9), alternative="less").pvalue)
        interval = stats.binomtest(correct, n).proportion_ci(confidence_level=1 - alpha)
        decayed = pval < alpha and base_acc - acc >= margin
        message = f"accuracy {acc:.4f} on {n} labelled rows vs baseline {base_acc:.4f} (p={pval:.3g}, one-sided binomial)"
        return PerformanceReport("decay" if decayed else "ok", n, metrics, base, "binomial", pval, (interval.low, interval.high), message)
    y_f = np.asarray(y_true, dtype=np.float64)
    p_f = np.asarray(y_pred, dtype=np.float64)
    base_rmse = float(baseline["rmse"])
    base = {"rmse": base_rmse, **({"mae": float(baseline["mae"])} if "mae" in baseline else {})}
    if n < min_rows:
        return PerformanceReport("insufficient", n, {}, base, "bootstrap", None, None, f"need ≥ {min_rows} labelled rows, got {n}")
    sq = (y_f - p_f) ** 2
    rmse = float(np.sqrt(sq.mean()))
    rng = np.random.default_rng(seed)
    # Each resample is a row-count vector (multinomial), so the bootstrap is one matrix product.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap)
    boot = np.sqrt(weights @ sq / n)
    low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    metrics = {"rmse": rmse, "mae": float(np.abs(y_f - p_f).mean())}
    decayed = low > base_rmse * (1 + margin)
    message = f"RMSE {rmse:.4g} on {n} labelled rows, {1 - alpha:.0%} bootstrap interval [{low:.4g}, {high:.4g}] vs baseline {base_rmse:.4g}"
    return PerformanceReport("decay" if decayed else "ok", n, metrics, base, "bootstrap", None, (low, high), message)
