"""Export stage: convert the fitted estimator to ONNX with skl2onnx and prove parity on the holdout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import is_classifier

from mlci.canonical import write_json
from mlci.config import Config
from mlci.errors import CheckFailed, ExportError
from mlci.model.data import Schema
from mlci.model.onnxio import feeds_from_frame, open_session, predict
from mlci.model.train import load_data, load_split, load_trained

if TYPE_CHECKING:
    from mlci.model.estimators import Step

__all__ = ["ExportResult", "ParityReport", "check_parity", "conversion_error", "convert", "run_export"]

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
    """ONNX bytes for ``estimator``; a converter failure becomes an ExportError naming the failing step."""
    from mlci.model.onnx_convert import convert_with_fallback

    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        onx = convert_with_fallback(
            estimator, [(f.name, f.kind) for f in schema.features], name, opset, ML_OPSET, options, optimise
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/TypeError/NameError for unsupported models
        raise ExportError(conversion_error(estimator, schema, exc)) from exc
    return bytes(onx.SerializeToString())


def conversion_error(estimator: Any, schema: Schema, exc: BaseException) -> str:
    """One readable line: which step skl2onnx failed on, its error (and cause) in short, and what to do."""
    from mlci.model.estimators import estimator_name

    step = _failing_step(estimator, exc)
    final = estimator_name(estimator)
    if step is None or step.estimator is _final_step(estimator):
        where = final + (f" (step '{step.path}')" if step is not None and step.path else "")
    else:
        what = f"{type(step.estimator).__name__}{_on_columns(step, schema)}"
        where = f"step '{step.path}' ({what}) of the {final} pipeline"
    hint = _hint(step, schema) if step is not None else None
    versions = f"skl2onnx {_version('skl2onnx')} supports with scikit-learn {_version('scikit-learn')}"
    advice = hint or (
        f"Choose an estimator {versions} "
        "(see https://onnx.ai/sklearn-onnx/supported.html) or register a custom converter."
    )
    return f"skl2onnx cannot convert {where} to ONNX: {_describe(exc)} {advice}"


def _on_columns(step: Step, schema: Schema) -> str:
    """" on categorical columns 'a', 'b'" (the kind when all share one); "" when the columns are unnamed."""
    if not step.columns:
        return ""
    kinds = {f.name: f.kind for f in schema.features}
    found = {kinds.get(c) for c in step.columns}
    kind = f"{found.pop()} " if len(found) == 1 and None not in found else ""
    return f" on {kind}columns {', '.join(map(repr, step.columns))}"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(not installed)"


def _final_step(estimator: Any) -> Any:
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return estimator


def _failing_step(estimator: Any, exc: BaseException) -> Step | None:
    """The Step whose skl2onnx converter raised ``exc``, or None when no converter was running.

    skl2onnx calls each converter as ``converter(scope, operator, container)``; ``operator.raw_operator``
    is the scikit-learn object being converted. The innermost frame of the traceback holding such an
    operator is the step that failed (only objects of ``estimator`` count).
    """
    from mlci.model.estimators import steps

    by_id = {id(step.estimator): step for step in steps(estimator)}
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        raw = getattr(frame.f_locals.get("operator"), "raw_operator", None)
        if id(raw) in by_id and by_id[id(raw)].estimator is raw:
            return by_id[id(raw)]
    return None


def _hint(step: Step, schema: Schema) -> str | None:
    """What to write instead, for the failures users meet most: a string imputer looking for NaN."""
    from sklearn.impute import SimpleImputer

    imputer = step.estimator
    categorical = {f.name for f in schema.features if f.kind == "categorical"}
    on_strings = step.columns is not None and set(step.columns) <= categorical
    if isinstance(imputer, SimpleImputer) and on_strings and not isinstance(imputer.missing_values, str):
        return (
            'Categorical missing values arrive as "" (empty strings, never NaN), so this '
            f"SimpleImputer(missing_values={imputer.missing_values!r}) imputes nothing and skl2onnx "
            'converts a string imputer only with a string missing_values. Use missing_values="": '
            'SimpleImputer(strategy="most_frequent", missing_values="") or '
            'SimpleImputer(strategy="constant", missing_values="", fill_value="(missing)") '
            "(what mlci's declarative pipeline uses)."
        )
    return None


_NODE = re.compile(r"Unable to create node '([^']*)' with name='[^']*' and attributes=\{", re.DOTALL)
_MAX_MESSAGE = 600


def _describe(exc: BaseException) -> str:
    """``Type: message`` in one line and short, then what caused it (skl2onnx wraps the real error)."""
    parts = [f"{type(exc).__name__}: {_short(str(exc))}"]
    cause = exc.__cause__
    while cause is not None and len(parts) < 3:
        parts.append(f"caused by {type(cause).__name__}: {_short(str(cause))}")
        cause = cause.__cause__
    return "; ".join(parts).rstrip(".") + "."


def _short(message: str) -> str:
    """A converter message on one line: an ONNX node's attribute dump (hundreds of KB of arrays) becomes
    the list of its attribute names; anything still too long is cut at a space, saying how much was cut."""
    node = _NODE.search(message)
    if node is not None:
        names = re.findall(r"(?:^|\n|\{)\s*'(\w+)':", message[node.end() - 1 :])
        listed = f" from its {len(names)} attributes ({', '.join(names)})" if names else ""
        message = f"{message[: node.start()]}Unable to create ONNX node '{node.group(1)}'{listed}"
    flat = " ".join(message.split()) or "no message"
    if len(flat) <= _MAX_MESSAGE:
        return flat
    cut = flat[:_MAX_MESSAGE].rsplit(" ", 1)[0]
    return f"{cut} … [{len(flat) - len(cut)} more characters]"


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
