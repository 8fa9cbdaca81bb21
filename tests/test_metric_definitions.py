"""What F1 and ROC AUC mean, as the README states it: binary = the positive class (the last of the sorted
classes); more classes = macro F1 and one-vs-rest ROC AUC, macro-averaged. The same in evaluate (the
artifact's metrics) and in the gate's weighted versions (the paired bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mlci.model.evaluate import classification_metrics
from mlci.model.onnxio import Prediction
from mlci.model.stats import weighted_metric

CLASSES = ["high", "low", "mid"]


def _three_class(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imbalanced 3-class labels, noisy probabilities, and the labels they predict."""
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * (y[:, None] == np.array(CLASSES)[None, :])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs, np.array(CLASSES)[probs.argmax(axis=1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_f1_is_macro_and_roc_auc_is_one_vs_rest_macro(seed: int) -> None:
    y, probs, labels = _three_class(seed)
    metrics = classification_metrics(y, Prediction(labels=labels, probabilities=probs), CLASSES)
    macro_f1 = skm.f1_score(y, labels, average="macro")
    ovr = np.mean([skm.roc_auc_score(y == c, probs[:, i]) for i, c in enumerate(CLASSES)])
    assert metrics["f1"] == pytest.approx(macro_f1, rel=1e-6)
    assert metrics["f1"] != pytest.approx(
        skm.f1_score(y, labels, average="weighted"), rel=1e-6
    )  # imbalance shows
    assert metrics["roc_auc"] == pytest.approx(ovr, rel=1e-6)
    W = np.ones((1, len(y)))
    gate_f1 = weighted_metric("f1", y, labels=labels, classes=CLASSES)(W)[0]
    gate_auc = weighted_metric("roc_auc", y, probabilities=probs, classes=CLASSES)(W)[0]
    assert gate_f1 == pytest.approx(macro_f1, rel=1e-9) and gate_auc == pytest.approx(ovr, rel=1e-9)


def test_binary_f1_and_roc_auc_are_of_the_last_class() -> None:
    rng = np.random.default_rng(5)
    y = rng.choice(["no", "yes"], 200, p=[0.7, 0.3])
    p_yes = np.clip(np.where(y == "yes", 0.6, 0.4) + rng.normal(0, 0.2, 200), 0.01, 0.99)
    labels = np.where(p_yes > 0.5, "yes", "no")
    probs = np.column_stack([1 - p_yes, p_yes])
    metrics = classification_metrics(y, Prediction(labels=labels, probabilities=probs), ["no", "yes"])
    assert metrics["f1"] == pytest.approx(skm.f1_score(y, labels, pos_label="yes"), rel=1e-6)
    assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", p_yes), rel=1e-6)
