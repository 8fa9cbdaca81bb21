"""Export stage: convert the fitted estimator to ONNX with skl2onnx and prove parity on the holdout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import is_classifier

from mlci.canonical import write_json
from mlci.config import Config
from mlci.errors import CheckFailed, ExportError
from mlci.model.data import Schema
from mlci.model.onnxio import feeds_from_frame, open_session, predict
from mlci.model.train import load_data, load_split, load_trained

__all__ = ["ExportResult", "ParityReport", "check_parity", "convert", "run_export"]

MODEL_FILE = "model.onnx"
PARITY_FILE = "parity.json"
ML_OPSET = 3
_WORST = 5


@dataclass(frozen=True)
class ParityReport:
    """sklearn vs onnxruntime on the same rows."""

    rows: int
    max_abs_diff: float
    max_rel_diff: float
    label_agreement: float | None
    abs_tolerance: float
    rel_tolerance: float
    worst_rows: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        """Classification: probabilities within abs tolerance and all labels equal; regression: rel tolerance."""
        if self.label_agreement is not None:
            return self.max_abs_diff <= self.abs_tolerance and self.label_agreement == 1.0
        return self.max_rel_diff <= self.rel_tolerance

    def to_json(self) -> dict[str, Any]:
        """JSON form (goes into the manifest)."""
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "label_agreement": self.label_agreement,
            "abs_tolerance": self.abs_tolerance,
            "rel_tolerance": self.rel_tolerance,
            "passed": self.passed,
            "worst_rows": self.worst_rows,
        }


def convert(estimator: Any, schema: Schema, name: str, opset: int, optimise: bool = True) -> bytes:
    """ONNX bytes for ``estimator``; a converter failure becomes an ExportError naming the estimator."""
    from mlci.model.estimators import estimator_name
    from mlci.model.onnx_convert import convert_with_fallback

    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        onx = convert_with_fallback(
            estimator, [(f.name, f.kind) for f in schema.features], name, opset, ML_OPSET, options, optimise
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/TypeError/NameError for unsupported models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"skl2onnx cannot convert {estimator_name(estimator)} to ONNX: {type(exc).__name__}: {first} "
            "Choose an estimator skl2onnx supports (see https://onnx.ai/sklearn-onnx/supported.html) "
            "or register a custom converter."
        ) from exc
    return bytes(onx.SerializeToString())


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    row_ids: np.ndarray,
    abs_tol: float,
    rel_tol: float,
    ref_labels: np.ndarray | None = None,
    cand_labels: np.ndarray | None = None,
) -> ParityReport:
    """Compare two prediction arrays row by row; name the worst rows by data row number (1-based)."""
    ref = reference.reshape(len(row_ids), -1)
    cand = candidate.reshape(len(row_ids), -1)
    abs_diff = np.abs(ref - cand)
    # Relative to the value's magnitude, but never divided by less than 1: near zero it is an absolute gap.
    rel_diff = abs_diff / np.maximum(np.abs(ref), 1.0)
    per_row = abs_diff.max(axis=1) if ref.size else np.zeros(0)
    agreement = None
    mismatched = np.zeros(len(row_ids), dtype=bool)
    if ref_labels is not None and cand_labels is not None:
        mismatched = np.asarray(ref_labels != cand_labels)
        agreement = float(1.0 - mismatched.mean()) if len(row_ids) else 1.0
    # Label mismatches first, then the largest differences.
    order = np.lexsort((-per_row, ~mismatched))[:_WORST]
    worst = []
    for i in order:
        entry: dict[str, Any] = {
            "row": int(row_ids[i]) + 1,
            "sklearn": [float(v) for v in ref[i]],
            "onnx": [float(v) for v in cand[i]],
            "abs_diff": float(per_row[i]),
        }
        if ref_labels is not None and cand_labels is not None:
            entry["labels"] = [str(ref_labels[i]), str(cand_labels[i])]
        worst.append(entry)
    return ParityReport(
        rows=len(row_ids),
        max_abs_diff=float(abs_diff.max()) if abs_diff.size else 0.0,
        max_rel_diff=float(rel_diff.max()) if rel_diff.size else 0.0,
        label_agreement=agreement,
        abs_tolerance=abs_tol,
        rel_tolerance=rel_tol,
        worst_rows=worst,
    )


@dataclass(frozen=True)
class ExportResult:
    """What the export stage wrote."""

    out_dir: Path
    parity: ParityReport
    size_bytes: int


def run_export(config: Config, train_dir: Path, out_dir: Path) -> ExportResult:
    """Convert, then run sklearn and onnxruntime on the holdout; fail (exit 1) when they disagree."""
    estimator, _summary, schema = load_trained(train_dir, config)
    onnx_bytes = convert(estimator, schema, config.name, config.export.target_opset)

    dataset = load_data(config)
    mask = load_split(train_dir, dataset)
    X_hold = dataset.X[mask]
    row_ids = np.flatnonzero(mask)
    session = open_session(onnx_bytes)
    served = predict(session, feeds_from_frame(X_hold, schema), config.task)
    if config.task == "classification":
        assert served.probabilities is not None and served.labels is not None
        report = check_parity(
            estimator.predict_proba(X_hold),
            served.probabilities,
            row_ids,
            config.export.abs_tolerance,
            config.export.rel_tolerance,
            np.asarray(estimator.predict(X_hold)).astype(str),
            served.labels.astype(str),
        )
    else:
        assert served.values is not None
        report = check_parity(
            np.asarray(estimator.predict(X_hold), dtype=np.float64),
            served.values,
            row_ids,
            config.export.abs_tolerance,
            config.export.rel_tolerance,
        )
    if not report.passed:
        rows = "; ".join(
            f"row {w['row']}: sklearn {w['sklearn']} vs onnx {w['onnx']}" + (f" labels {w['labels']}" if "labels" in w else "")
            for w in report.worst_rows[:3]
        )
        label_part = f", label agreement {report.label_agreement:.4%}" if report.label_agreement is not None else ""
        raise CheckFailed(
            f"ONNX parity failed on {report.rows} holdout rows: max abs diff {report.max_abs_diff:.3g} "
            f"(tolerance {report.abs_tolerance:g}), max rel diff {report.max_rel_diff:.3g} "
            f"(tolerance {report.rel_tolerance:g}){label_part}. Worst rows: {rows}. Loosen [export] "
            "tolerances only if the difference is acceptable; otherwise simplify the preprocessing."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(onnx_bytes)
    write_json(out_dir / PARITY_FILE, report.to_json())
    return ExportResult(out_dir, report, len(onnx_bytes))
