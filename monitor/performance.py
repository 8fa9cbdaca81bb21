"""Concept drift / performance decay: delayed labels joined to logged predictions by request id.

Labels arrive as JSON Lines ``{"id": "<request id>", "labels": [...]}`` (one label per row of the
request) or as a CSV with columns ``id,label`` (optionally ``row``, the row within the request; rows
without it are taken in order; one record per physical line). Both are read incrementally from a byte
offset, complete lines only. A line that cannot be used is returned as a :class:`BadLine` (the monitor
quarantines it) instead of failing the read: one bad line must not stop every later cycle.

Classification: accuracy and F1 on the labelled rows; decay when a one-sided binomial test says the
accuracy is below the baseline (``scipy.stats.binomtest``) *and* the drop is at least ``margin``.
Regression: RMSE and MAE; decay when the lower end of a seeded bootstrap interval of the RMSE lies above
``baseline x (1 + margin)``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

from mlci.monitor.errors import MonitorError

__all__ = ["BadLine", "LabelsRead", "PerformanceReport", "evaluate_performance", "join_labels", "read_labels"]


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


@dataclass(frozen=True)
class BadLine:
    """A labels line that cannot be used: where it is, its text and why (quarantined, never fatal)."""

    source: str
    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class LabelsRead:
    """What :func:`read_labels` found: labels by request id, the line each came from, the bad lines, and
    where the next read starts (``offset`` bytes, ``line`` the number of the next line)."""

    labels: dict[str, list[Any]]
    lines: dict[str, int]
    bad: list[BadLine]
    offset: int
    line: int


def _text(line: bytes) -> str:
    """A line as text for the quarantine file: undecodable bytes shown as escapes, capped at 1000 characters."""
    return line.decode("utf-8", errors="backslashreplace")[:1000]


def _decode(line: bytes) -> str:
    """``line`` as UTF-8; a ValueError naming the first bad byte otherwise."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"is not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); write the labels file as UTF-8"
        ) from None


def _json_label(line: bytes) -> tuple[str, list[Any]]:
    """(request id, labels) of one JSON Lines entry; a ValueError saying what is wrong otherwise."""
    _decode(line)
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    if not isinstance(doc, dict) or "id" not in doc or not isinstance(doc.get("labels"), list):
        raise ValueError('must be {"id": <request id>, "labels": [<one label per row of the request>]}')
    return str(doc["id"]), doc["labels"]


def _csv_label(line: bytes, header: list[str]) -> tuple[str, int | None, Any]:
    """(request id, row or None, label) of one CSV line; a ValueError saying what is wrong otherwise."""
    [fields] = list(csv.reader([_decode(line)])) or [[]]
    if len(fields) != len(header):
        raise ValueError(f"has {len(fields)} field(s) but the header {header} has {len(header)}")
    entry = dict(zip(header, fields, strict=True))
    row = entry.get("row")
    if row in (None, ""):
        return entry["id"], None, entry["label"]
    try:
        return entry["id"], int(row), entry["label"]
    except ValueError:
        raise ValueError(
            f"'row' must be an integer (the row within the request, from 0); got {row!r}"
        ) from None


def read_labels(path: Path, offset: int = 0, line: int = 1) -> LabelsRead:
    """Labels by request id from ``offset`` (whose line number is ``line``) to the last complete line.

    A line that cannot be used (not JSON, not UTF-8, a CSV ``row`` that is not an integer, ...) is
    returned in ``bad`` with its number and reason; only a CSV without an ``id,label`` header is an error.
    """
    if not path.is_file():
        raise MonitorError(
            f"Labels file '{path}' does not exist; pass --labels with a JSON Lines or CSV file."
        )
    is_csv = path.suffix.lower() == ".csv"
    with path.open("rb") as f:
        header_line = f.readline() if is_csv else b""
        start = max(offset, len(header_line))
        if start == len(header_line):
            line = 2 if is_csv else 1  # reading from the start: line numbers too
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1
    header: list[str] = []
    if is_csv:
        header = next(csv.reader([header_line.decode("utf-8", errors="replace")]), [])
        header = [h.strip() for h in header]
        if not {"id", "label"} <= set(header):
            raise MonitorError(
                f"'{path}' needs a header with 'id' and 'label' columns (and optionally 'row'); got {header}."
            )
    labels: dict[str, list[Any]] = {}
    numbers: dict[str, int] = {}
    csv_rows: dict[str, dict[int, Any]] = {}
    bad: list[BadLine] = []
    for number, text in enumerate(data[:end].split(b"\n")[:-1], line):
        if not text.strip():
            continue
        try:
            if is_csv:
                request, row, label = _csv_label(text.rstrip(b"\r"), header)
                slot = csv_rows.setdefault(request, {})
                slot[row if row is not None else len(slot)] = label
                numbers.setdefault(request, number)
            else:
                request, values = _json_label(text)
                labels[request] = values
                numbers[request] = number
        except ValueError as exc:
            bad.append(BadLine(str(path), number, _text(text), f"line {number} {exc}"))
    for request, slot in csv_rows.items():
        labels[request] = [slot[i] for i in sorted(slot)]
    return LabelsRead(labels, numbers, bad, start + end, line + data[:end].count(b"\n"))


def join_labels(
    labels: Mapping[str, Sequence[Any]],
    predictions: Mapping[str, Sequence[Any]],
    on_mismatch: Callable[[str, str], None] | None = None,
) -> tuple[list[Any], list[Any], list[str]]:
    """(true, predicted, unmatched ids): rows whose request id has both a label and a logged prediction.

    A request whose label count differs from its predicted rows is an error, or, with ``on_mismatch``,
    passed to it (request id, reason) and left out.
    """
    y_true: list[Any] = []
    y_pred: list[Any] = []
    unmatched: list[str] = []
    for request_id, values in labels.items():
        predicted = predictions.get(request_id)
        if predicted is None:
            unmatched.append(request_id)
            continue
        if len(predicted) != len(values):
            reason = (
                f"request {request_id!r} has {len(predicted)} predicted row(s) but {len(values)} label(s)"
            )
            if on_mismatch is None:
                raise MonitorError(reason[0].upper() + reason[1:] + ".")
            on_mismatch(request_id, reason)
            continue
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
            return PerformanceReport(
                "insufficient",
                n,
                {},
                base,
                "binomial",
                None,
                None,
                f"need ≥ {min_rows} labelled rows, got {n}",
            )
        correct = int(np.sum(y == p))
        acc = correct / n
        metrics = {"accuracy": acc, "f1": _f1(y, p, list(classes) or sorted(set(y) | set(p)))}
        pval = float(stats.binomtest(correct, n, min(base_acc, 1 - 1e-9), alternative="less").pvalue)
        interval = stats.binomtest(correct, n).proportion_ci(confidence_level=1 - alpha)
        decayed = pval < alpha and base_acc - acc >= margin
        message = f"accuracy {acc:.4f} on {n} labelled rows vs baseline {base_acc:.4f} (p={pval:.3g}, one-sided binomial)"
        return PerformanceReport(
            "decay" if decayed else "ok",
            n,
            metrics,
            base,
            "binomial",
            pval,
            (interval.low, interval.high),
            message,
        )
    y_f = np.asarray(y_true, dtype=np.float64)
    p_f = np.asarray(y_pred, dtype=np.float64)
    base_rmse = float(baseline["rmse"])
    base = {"rmse": base_rmse, **({"mae": float(baseline["mae"])} if "mae" in baseline else {})}
    if n < min_rows:
        return PerformanceReport(
            "insufficient", n, {}, base, "bootstrap", None, None, f"need ≥ {min_rows} labelled rows, got {n}"
        )
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
    return PerformanceReport(
        "decay" if decayed else "ok", n, metrics, base, "bootstrap", None, (low, high), message
    )
