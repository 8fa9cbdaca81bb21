"""Feed a dataframe to an ONNX model and read its outputs, the same way everywhere (export, evaluate, serving)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from mlci.model.data import Schema

__all__ = ["Prediction", "feeds_from_frame", "open_session", "predict"]


@dataclass(frozen=True)
class Prediction:
    """ONNX outputs: ``labels`` and ``probabilities`` (classification) or ``values`` (regression)."""

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None


def open_session(model: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; one intra-op thread by default (predictable latency, no oversubscription)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def feeds_from_frame(X: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """One [n, 1] tensor per feature: float32 for numeric, object (str) for categorical."""
    feeds: dict[str, np.ndarray] = {}
    for feature in schema.features:
        column = X[feature.name].to_numpy()
        if feature.kind == "numeric":
            feeds[feature.name] = column.astype(np.float32).reshape(-1, 1)
        else:
            feeds[feature.name] = column.astype(str).astype(object).reshape(-1, 1)
    return feeds


def predict(session: ort.InferenceSession, feeds: dict[str, np.ndarray], task: str) -> Prediction:
    """Run the model; classifiers are exported with label + probability-matrix outputs (no ZipMap)."""
    outputs = session.run(None, feeds)
    if task == "classification":
        return Prediction(labels=np.asarray(outputs[0]).ravel(), probabilities=np.asarray(outputs[1], dtype=np.float64))
    return Prediction(values=np.asarray(outputs[0], dtype=np.float64).ravel())
