"""The profile the digest covers is computed off onnxruntime, so a CPU's inference kernels cannot move it.

Portable numerics pin what numpy and OpenBLAS do (mlci/numerics.py), but onnxruntime's MLAS picks its
kernels from CPUID with no setting to hold it (onnxruntime core/mlas/lib/platform.cpp), so an ONNX output
can differ in its last bits between CPUs. profile.json is part of the identity: its prediction section
and the outlier threshold come from the scikit-learn pipelines (portable numerics) instead; what
onnxruntime measures (metrics, the held-out outlier rate) is evidence.

Here the other CPU's kernels are stood in for by a model.onnx whose weights are one float32 step away:
the ONNX outputs move by an ulp-sized amount, as another kernel's rounding moves them. The profile must
not move.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlci.config import load_config
from mlci.model.artifact import evidence_of
from mlci.stages import evaluate_stage, export_stage, train_stage

from .test_pipeline import CASES, SCALED


def nudge_weights(model_path: Path) -> int:
    """Move every float initializer of ``model_path`` one float32 step up; the number of values moved."""
    model = onnx.load(str(model_path))
    moved = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for i, tensor in enumerate(graph.initializer):
            values = numpy_helper.to_array(tensor)
            if values.dtype not in (np.float32, np.float64) or values.size == 0:
                continue
            up = np.nextafter(values.astype(np.float32), np.float32(np.inf)).astype(values.dtype)
            moved += int((up != values).sum())
            graph.initializer[i].CopyFrom(numpy_helper.from_array(up, tensor.name))
        for node in graph.node:
            graphs += [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
    onnx.save(model, str(model_path))
    return moved


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ridge on the mixed CSV (its profile stores exact prediction edges) trained and exported once,
    evaluated on that model.onnx and on one whose weights are one float32 step away."""
    from .conftest import BASE_TOML, mixed_frame

    root = tmp_path_factory.mktemp("profile-identity")
    task, target, estimator = CASES["ridge"]
    mixed_frame().to_csv(root / "data.csv", index=False)
    text = BASE_TOML.format(name="demo", task=task, target=target, estimator=estimator + "\n" + SCALED, data_extra='drop = ["churn"]')
    (root / "mlci.toml").write_text(text)
    config = load_config(root / "mlci.toml", root / "ws")
    dirs = {name: root / name for name in ("train", "export", "export_other_cpu", "a", "b")}
    train_stage(config, {}, dirs["train"])
    export_stage(config, {"train": dirs["train"]}, dirs["export"])
    shutil.copytree(dirs["export"], dirs["export_other_cpu"])
    assert nudge_weights(dirs["export_other_cpu"] / "model.onnx") > 0
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export"]}, dirs["a"])
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export_other_cpu"]}, dirs["b"])
    return {"config": config, **dirs}


def test_the_prediction_profile_does_not_move_with_onnxruntimes_arithmetic(evaluated: dict[str, Any]) -> None:
    a, b = (json.loads((evaluated[d] / "profile.json").read_text()) for d in ("a", "b"))
    assert a["prediction"] == b["prediction"]
    assert (evaluated["a"] / "profile.json").read_bytes() == (evaluated["b"] / "profile.json").read_bytes()
    # The nudge is real: what onnxruntime measured on the two models differs (evidence, not identity).
    ea, eb = (evidence_of(json.loads((evaluated[d] / "manifest.json").read_text())) for d in ("a", "b"))
    assert ea["metrics"] != eb["metrics"]


def test_the_outlier_threshold_is_the_forests_own_quantile_not_onnxruntimes(evaluated: dict[str, Any]) -> None:
    """outlier.onnx is fitted and converted inside evaluate, so no nudge reaches it: the threshold is checked
    to be exactly the quantile of scikit-learn's scores, and shown to differ from onnxruntime's (float32)."""
    from mlci.model.data import Schema
    from mlci.model.evaluate import _outlier_scores, outlier_detector, outlier_scores
    from mlci.model.onnxio import open_session
    from mlci.model.train import load_data, load_split, load_trained_summary

    config = evaluated["config"]
    _summary, schema = load_trained_summary(evaluated["train"])
    assert isinstance(schema, Schema)
    dataset = load_data(config)
    X_train = dataset.X[~load_split(evaluated["train"], dataset)]
    q = config.evaluate.outlier_quantile
    sklearn = float(np.quantile(outlier_scores(outlier_detector(schema, config).fit(X_train), X_train), q))
    onnx_runtime = float(np.quantile(_outlier_scores(open_session(evaluated["a"] / "outlier.onnx"), X_train, schema), q))
    threshold = json.loads((evaluated["a"] / "profile.json").read_text())["outlier"]["score_threshold"]
    assert threshold == sklearn
    assert onnx_runtime != sklearn and abs(onnx_runtime - sklearn) < 1e-5  # the same forest, in float32


def test_threaded_work_inside_a_fitted_pipeline_runs_in_order() -> None:
    """A forest inside a meta-estimator keeps its own n_jobs after fit (get_params does not reach the
    fitted sub-estimators), and threads that sum as they finish move the last bits: the profile's
    predictions run every joblib task on this thread, in order."""
    import threading

    from joblib import Parallel, delayed
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.compose import TransformedTargetRegressor

    from mlci.model.evaluate import pipeline_prediction

    class Threaded(RegressorMixin, BaseEstimator):
        def __init__(self, n_jobs: int = 2) -> None:
            self.n_jobs = n_jobs

        def fit(self, X: Any, y: Any) -> Threaded:
            self.mean_ = float(np.mean(y))
            return self

        def predict(self, X: Any) -> np.ndarray:
            names = Parallel(n_jobs=self.n_jobs, prefer="threads")(
                delayed(lambda: threading.current_thread().name)() for _ in range(8)
            )
            self.threads_ = set(names)
            return np.full(len(X), self.mean_)

    X = np.arange(20.0).reshape(10, 2)
    model = TransformedTargetRegressor(regressor=Threaded(n_jobs=2)).fit(X, np.arange(10.0))
    model.predict(X)
    assert model.regressor_.threads_ != {threading.current_thread().name}  # on its own it uses threads
    pipeline_prediction(model, X, "regression")
    assert model.regressor_.threads_ == {threading.current_thread().name}
    assert model.regressor_.n_jobs == 2  # and the caller's estimator is left as it was
