"""Evaluate stage: metrics from onnxruntime (what will be served), latency, the monitoring profile, an outlier model.

What onnxruntime measures is evidence (metrics, latency, the held-out outlier rate). The profile is part of
the model's identity, so it is computed from the scikit-learn pipelines, whose bits portable numerics hold
on every x86-64 CPU; onnxruntime's CPU kernels are chosen from CPUID, which no setting pins.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

from mlci.config import Config
from mlci.model.data import Schema
from mlci.model.onnxio import Prediction, feeds_from_frame, open_session, predict
from mlci.model.stats import PROFILE_VERSION, bin_counts, bin_edges

__all__ = [
    "EvaluateResult",
    "build_profile",
    "classification_metrics",
    "outlier_detector",
    "outlier_scores",
    "pipeline_prediction",
    "regression_metrics",
    "run_evaluate",
]

# The outlier model's measurements on the holdout: evidence, not profile (see fit_outlier_model).
HELD_OUT_KEYS = ("holdout_outlier_rate", "holdout_rows")
_SIG = 9  # significant digits kept in metrics: stable across BLAS builds, ample for gates


def _r(x: float) -> float:
    return float(f"{float(x):.{_SIG}g}")


def _normalised(probabilities: np.ndarray) -> np.ndarray:
    """Float32 probabilities from ONNX sum to 1 only within ~1e-7; log loss wants exact rows."""
    clipped = np.clip(probabilities, 1e-15, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def classification_metrics(y: np.ndarray, pred: Prediction, classes: list[Any]) -> dict[str, Any]:
    """Accuracy, F1, ROC AUC, log loss and per-class precision/recall/F1/support."""
    assert pred.labels is not None and pred.probabilities is not None
    y_s = np.asarray(y).astype(str)
    labels_s = pred.labels.astype(str)
    class_s = [str(c) for c in classes]
    binary = len(classes) == 2
    out: dict[str, Any] = {
        "accuracy": _r(skm.accuracy_score(y_s, labels_s)),
        "f1": _r(skm.f1_score(y_s, labels_s, average="binary" if binary else "macro", pos_label=class_s[-1] if binary else 1, labels=class_s)),
        "log_loss": _r(skm.log_loss(y_s, _normalised(pred.probabilities), labels=class_s)),
        "rows": len(y_s),
    }
    present = set(y_s)
    if len(present) >= 2:
        if binary:
            out["roc_auc"] = _r(skm.roc_auc_score(y_s == class_s[-1], pred.probabilities[:, 1]))
        elif present == set(class_s):
            out["roc_auc"] = _r(skm.roc_auc_score(y_s, pred.probabilities, multi_class="ovr", labels=class_s))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_s, labels_s, labels=class_s, zero_division=0)
    out["per_class"] = {
        c: {"precision": _r(p), "recall": _r(r), "f1": _r(f), "support": int(s)}
        for c, p, r, f, s in zip(class_s, precision, recall, f1, support, strict=True)
    }
    return out


def regression_metrics(y: np.ndarray, pred: Prediction) -> dict[str, Any]:
    """RMSE, MAE and R2."""
    assert pred.values is not None
    y_f = np.asarray(y, dtype=np.float64)
    return {
        "rmse": _r(np.sqrt(skm.mean_squared_error(y_f, pred.values))),
        "mae": _r(skm.mean_absolute_error(y_f, pred.values)),
        "r2": _r(skm.r2_score(y_f, pred.values)) if len(y_f) > 1 else None,
        "rows": len(y_f),
    }


def sequential() -> Any:
    """A context in which scikit-learn's joblib work runs on this thread, in order: threads that sum
    partial results as they finish (a forest's ``predict_proba``, an isolation forest's depths, the
    fitted sub-estimators of a meta-estimator) would move the last bits with the core count."""
    from joblib import parallel_config

    return parallel_config(backend="sequential")


def pipeline_prediction(estimator: Any, X: pd.DataFrame, task: str) -> Prediction:
    """The fitted scikit-learn pipeline's predictions on ``X``, as float64: what the profile is built from.

    Its bits are held by portable numerics (mlci.numerics); onnxruntime's are not (its kernels follow the
    CPU), and the served model agrees with these within the export's parity tolerance.
    """
    with sequential():
        if task == "classification":
            return Prediction(
                labels=np.asarray(estimator.predict(X)),
                probabilities=np.asarray(estimator.predict_proba(X), dtype=np.float64),
            )
        return Prediction(values=np.asarray(estimator.predict(X), dtype=np.float64).ravel())


def _numeric_profile(col: pd.Series, bins: int) -> dict[str, Any]:
    present = col.dropna().to_numpy(dtype=np.float64)
    missing = float(col.isna().mean())
    if present.size == 0:
        return {"kind": "numeric", "missing_rate": missing, "edges": [], "fractions": []}
    # Interior quantile edges, between distinct values; the outer bins are open so production values
    # outside the range still land. Edges are stored exactly (not _r): the monitor bins with these very floats.
    edges = bin_edges(present, bins)
    counts = bin_counts(present, edges)
    return {
        "kind": "numeric",
        "missing_rate": _r(missing),
        "edges": [float(e) for e in edges],
        "fractions": [_r(c / present.size) for c in counts],
        "mean": _r(present.mean()),
        "std": _r(present.std()),
        "min": _r(present.min()),
        "max": _r(present.max()),
        "sample": [_r(v) for v in np.quantile(present, np.linspace(0, 1, 101))],
    }


def _categorical_profile(col: pd.Series, top: int = 50) -> dict[str, Any]:
    missing = float((col == "").mean())
    present = col[col != ""]
    freq = present.value_counts(normalize=True, sort=True)
    # Ties are ordered by name so the profile (and the digest) does not depend on row order.
    items = sorted(freq.items(), key=lambda kv: (-kv[1], str(kv[0])))
    kept = dict(items[:top])
    other = float(sum(v for _, v in items[top:]))
    return {
        "kind": "categorical",
        "missing_rate": _r(missing),
        "frequencies": {str(k): _r(v) for k, v in kept.items()},
        "other": _r(other),
    }


def build_profile(
    X_train: pd.DataFrame, schema: Schema, pred: Prediction, classes: list[Any], bins: int
) -> dict[str, Any]:
    """The reference the monitor compares production against, so it never needs the training data.

    Part of the model's identity: what the monitor acts on. The holdout metrics it compares labelled
    traffic with are evidence (the manifest's ``evidence``), no longer copied here (PROFILE_VERSION 3).
    """
    features = {
        f.name: _numeric_profile(X_train[f.name], bins) if f.kind == "numeric" else _categorical_profile(X_train[f.name])
        for f in schema.features
    }
    if pred.probabilities is not None and pred.labels is not None:
        labels = pred.labels.astype(str)
        edges = np.linspace(0, 1, bins + 1)[1:-1]
        prediction = {
            "kind": "classification",
            "rows": len(labels),
            "label_fractions": {str(c): _r(float((labels == str(c)).mean())) for c in classes},
            "probability_edges": [float(e) for e in edges],
            "probability_fractions": {
                str(c): [_r(v) for v in bin_counts(pred.probabilities[:, i], edges) / max(len(labels), 1)]
                for i, c in enumerate(classes)
            },
        }
    else:
        assert pred.values is not None
        prediction = {"kind": "regression", "rows": len(pred.values), **_numeric_profile(pd.Series(pred.values), bins)}
    return {
        "schema_version": PROFILE_VERSION,
        "rows": len(X_train),
        "features": features,
        "prediction": prediction,
    }


def measure_latency(session: Any, X: pd.DataFrame, schema: Schema, runs: int) -> dict[str, float]:
    """Single-row onnxruntime latency in milliseconds (p50/p99/mean) after a warm-up."""
    rows = [feeds_from_frame(X.iloc[[i % len(X)]], schema) for i in range(min(runs, len(X)))]
    for feeds in rows[:10]:
        session.run(None, feeds)
    samples = np.empty(runs)
    for i in range(runs):
        feeds = rows[i % len(rows)]
        t0 = time.perf_counter()
        session.run(None, feeds)
        samples[i] = (time.perf_counter() - t0) * 1000.0
    return {
        "p50": round(float(np.percentile(samples, 50)), 4),
        "p99": round(float(np.percentile(samples, 99)), 4),
        "mean": round(float(samples.mean()), 4),
        "runs": runs,
    }


def outlier_detector(schema: Schema, config: Config) -> Pipeline:
    """The unfitted outlier detector: an IsolationForest behind the same imputation and encoding, in float32."""
    from mlci.model.estimators import float32_cast, preprocessor

    forest = IsolationForest(
        n_estimators=config.evaluate.outlier_estimators,
        contamination=config.evaluate.outlier_quantile,
        random_state=config.seed,
    )
    return Pipeline(
        [("preprocess", preprocessor(schema, scale=False)), ("float32", float32_cast()), ("iforest", forest)]
    )


def fit_outlier_model(
    X_train: pd.DataFrame, schema: Schema, config: Config, X_hold: pd.DataFrame | None = None
) -> tuple[bytes, dict[str, Any]]:
    """IsolationForest on the training rows behind the same imputation/encoding, exported to ONNX.

    The threshold is calibrated here: ``score_threshold`` is the ``[evaluate] outlier_quantile`` quantile
    of the forest's scores on the training rows (scikit-learn's, :func:`outlier_scores`, which outlier.onnx
    reproduces in float32), so the monitor (which flags rows scoring below it, see
    :mod:`mlci.monitor.outliers`) flags that share of rows from the training distribution. The
    forest's ``contamination`` is the same quantile, so outlier.onnx's own label agrees up to float32
    rounding. The rate on the holdout is the monitor's reference: on the rows it was fitted on, a forest
    flags fewer outliers than on unseen rows from the same distribution.

    The held-out rate (HELD_OUT_KEYS) is a measurement: :func:`run_evaluate` files it as evidence, the
    rest (the threshold and what the training rows give) goes into profile.json.
    """
    from mlci.model.export import convert

    quantile = config.evaluate.outlier_quantile
    detector = outlier_detector(schema, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        detector.fit(X_train)
    onnx_bytes = convert(detector, schema, f"{config.name}-outlier", config.export.target_opset, optimise=False)
    # The threshold is identity (profile.json): from the fitted forest, whose bits portable numerics hold,
    # not from onnxruntime, whose kernels follow the CPU. outlier.onnx's scores are its decision_function
    # in float32 (skl2onnx's converter), so they agree to float32 rounding.
    scores = outlier_scores(detector, X_train)
    # Exact (no _r): the monitor compares its scores with this very float.
    threshold = float(np.quantile(scores, quantile))
    extra: dict[str, Any] = {}
    if X_hold is not None and len(X_hold):
        held = _outlier_scores(open_session(onnx_bytes), X_hold, schema)  # a measurement: evidence
        extra = {"holdout_outlier_rate": _r(float((held < threshold).mean())), "holdout_rows": len(X_hold)}
    return onnx_bytes, {
        **extra,
        "score_threshold": threshold,
        "threshold_quantile": quantile,
        "train_outlier_rate": _r(float((scores < threshold).mean())),
        "score_quantiles": [_r(q) for q in np.quantile(scores, [0.01, 0.05, 0.5, 0.95, 0.99])],
        "outputs": {
            "label": "-1 = outlier, 1 = inlier (the forest's contamination = threshold_quantile)",
            "scores": "lower = more anomalous; the monitor flags scores below score_threshold",
        },
    }


def outlier_scores(detector: Any, X: pd.DataFrame) -> np.ndarray:
    """The fitted detector's scores on ``X`` (its decision_function, which outlier.onnx's ``scores``
    output computes in float32), as float64: what the identity's threshold is calibrated on."""
    with sequential():
        return np.asarray(detector.decision_function(X), dtype=np.float64).ravel()


def _outlier_scores(session: Any, X: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The exported detector's scores (its second output) as float64, as the monitor reads them."""
    return np.asarray(session.run(None, feeds_from_frame(X, schema))[1], dtype=np.float64).ravel()


@dataclass(frozen=True)
class EvaluateResult:
    """Everything evaluate measured; :mod:`mlci.model.artifact` assembles the artifact from it."""

    metrics: dict[str, Any]
    latency_ms: dict[str, float]
    profile: dict[str, Any]
    outlier_onnx: bytes
    outlier: dict[str, Any]
    outlier_evidence: dict[str, Any]


def run_evaluate(config: Config, train_dir: Path, export_dir: Path) -> EvaluateResult:
    """Metrics and latency measured on the exported model with onnxruntime, plus profile and outlier model."""
    from mlci.model.export import MODEL_FILE
    from mlci.model.train import load_data, load_split, load_trained, load_trained_summary

    summary, schema = load_trained_summary(train_dir)
    dataset = load_data(config)
    mask = load_split(train_dir, dataset)
    X_hold, y_hold = dataset.X[mask], dataset.y[mask].to_numpy()
    X_train = dataset.X[~mask]
    session = open_session(export_dir / MODEL_FILE)
    pred = predict(session, feeds_from_frame(X_hold, schema), config.task)
    classes = summary["classes"]
    metrics = classification_metrics(y_hold, pred, classes) if config.task == "classification" else regression_metrics(y_hold, pred)
    metrics["model_size_bytes"] = (export_dir / MODEL_FILE).stat().st_size
    latency = measure_latency(session, X_hold, schema, config.evaluate.latency_runs)
    # The profile is identity: its predictions come from the fitted pipeline (portable numerics hold its
    # bits), not from onnxruntime, whose kernels follow the CPU (the parity check bounds the difference).
    estimator, _summary, _schema = load_trained(train_dir, config)
    reference = pipeline_prediction(estimator, X_hold, config.task)
    profile = build_profile(X_train, schema, reference, classes, config.evaluate.profile_bins)
    outlier_bytes, outlier = fit_outlier_model(X_train, schema, config, X_hold)
    profile["outlier"] = {k: v for k, v in outlier.items() if k not in HELD_OUT_KEYS}
    held_out = {k: v for k, v in outlier.items() if k in HELD_OUT_KEYS}
    return EvaluateResult(metrics, latency, profile, outlier_bytes, outlier, held_out)
