"""The runtime: verified load, tamper refusal, metadata, parity with the pipeline's own predict path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mlci.errors import DataError
from mlci.model.artifact import read_manifest
from mlci.model.onnxio import open_session
from mlci.serving.errors import InvalidInput
from mlci.serving.runtime import ModelRuntime


def test_load_metadata_and_warm_up(bc_artifact: Path) -> None:
    runtime = ModelRuntime.load(bc_artifact)
    manifest = read_manifest(bc_artifact)
    meta = runtime.metadata()
    assert meta["versions"] == [manifest["digest"]]
    assert [i["name"] for i in meta["inputs"]] == [f["name"] for f in manifest["schema"]["features"]]
    assert meta["parameters"]["classes"] == manifest["schema"]["classes"]
    labels, probabilities = runtime.warm_up()
    assert labels.shape == (1,) and probabilities.shape == (1, 2)
    assert runtime.info.versions == (manifest["digest"], manifest["digest"].removeprefix("sha256:"))


def test_run_matches_session(mixed_artifact: Path) -> None:
    runtime = ModelRuntime.load(mixed_artifact)
    feeds = {
        "age": np.array([[30.0], [np.nan]], dtype=np.float32),
        "income": np.array([[80.0], [20.0]], dtype=np.float32),
        "color": np.array([["red"], [""]], dtype=object),
    }
    want = open_session(mixed_artifact / "model.onnx").run(None, feeds)
    got = runtime.run(feeds)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].dtype == np.float32  # probabilities are FP32 whatever the model computes in
    np.testing.assert_array_equal(got[1], want[1].astype(np.float32))


@pytest.mark.parametrize("target", ["model.onnx", "manifest.json"])
def test_tampered_artifact_is_refused(bc_artifact: Path, tmp_path: Path, target: str) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(bc_artifact, copy)
    path = copy / target
    if target == "model.onnx":
        path.write_bytes(path.read_bytes() + b"\0")
        match = "model.onnx .* has sha256"
    else:
        path.write_text(path.read_text().replace('"breast-cancer"', '"breast-cancer2"', 1))
        match = "was edited"
    with pytest.raises(DataError, match=match):
        ModelRuntime.load(copy)


def test_unimputable_nan_is_rejected_not_returned(bc_artifact: Path) -> None:
    """A model without an imputer would answer NaN; the runtime turns that into a 422 naming the rows."""
    runtime = ModelRuntime.load(bc_artifact)
    feeds = {s.name: np.zeros((2, 1), dtype=np.float32) for s in runtime.info.inputs}
    runtime.session = _NanSession(runtime.session)
    with pytest.raises(InvalidInput, match=r"non-finite 'probabilities' for row\(s\) \[1\]"):
        runtime.run(feeds)


class _NanSession:
    """Wraps a real session and poisons row 1 of the probabilities (what a model without imputer returns)."""

    def __init__(self, session: object) -> None:
        self.session = session

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        labels, probabilities = self.session.run(names, feeds)  # type: ignore[attr-defined]
        probabilities = probabilities.copy()
        probabilities[1] = np.nan
        return [labels, probabilities]


@pytest.mark.parametrize("which", ["bc", "mixed"])
def test_labels_come_from_class_indices_and_match_the_model(
    which: str, bc_artifact: Path, mixed_artifact: Path
) -> None:
    """The runtime asks onnxruntime for class indices; the names it maps them to are the model's labels."""
    artifact = bc_artifact if which == "bc" else mixed_artifact
    runtime = ModelRuntime.load(artifact)
    assert runtime.labels is not None and runtime.label_output == "label"
    assert runtime.metadata()["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1]}
    session = open_session(artifact / "model.onnx")
    rng = np.random.default_rng(5)
    rows = 300
    feeds = {
        i.name: (
            (rng.normal(size=(rows, 1)) * 40 + 50).astype(np.float32)
            if i.type == "tensor(float)"
            else rng.choice(np.array(["red", "green", "blue", ""], dtype=object), size=(rows, 1))
        )
        for i in session.get_inputs()
    }
    want = session.run(None, feeds)
    numeric = runtime.numeric
    packed = np.vstack([feeds[n].T for n in numeric]) if numeric else None
    results, index = runtime.predict_indexed(packed, {k: v for k, v in feeds.items() if k not in numeric})
    assert index is not None and index.dtype == np.int64
    assert len(set(want[0].tolist())) == 2  # both classes occur: the mapping is really exercised
    assert results[0].dtype == np.int64  # the label output holds class indices here
    assert runtime.labels.strings(results[0]).tolist() == want[0].tolist()
    np.testing.assert_array_equal(results[1], want[1].astype(np.float32))
    assert (
        runtime.predict(packed, {k: v for k, v in feeds.items() if k not in numeric})[0].tolist()
        == want[0].tolist()
    )


_ESTIMATORS = {
    "logistic": ("classification", "sklearn.linear_model.LogisticRegression", "{ max_iter = 500 }"),
    "forest": (
        "classification",
        "sklearn.ensemble.RandomForestClassifier",
        "{ n_estimators = 5, random_state = 0 }",
    ),
    "ridge": ("regression", "sklearn.linear_model.Ridge", "{}"),
    "forest-regressor": (
        "regression",
        "sklearn.ensemble.RandomForestRegressor",
        "{ n_estimators = 5, random_state = 0 }",
    ),
}


@pytest.mark.parametrize("estimator", list(_ESTIMATORS))
def test_one_float_datatype_per_task_whatever_the_estimator(estimator: str, tmp_path: Path) -> None:
    """Probabilities are FP32 and regression values FP64 for every estimator (skl2onnx's own output types
    differ: double for linear models, float for trees); the served numbers are the model's, cast."""
    import random

    from mlci.config import load_config
    from mlci.pipeline import run_pipeline

    task, cls, params = _ESTIMATORS[estimator]
    rng = random.Random(5)
    lines = ["x1,x2,y"]
    for _ in range(160):
        x1, x2 = rng.uniform(0, 10), rng.uniform(-5, 5)
        y = x1 * 0.7 - x2 + rng.gauss(0, 0.5)
        lines.append(
            f"{x1:.3f},{x2:.3f},{('hi' if y > 3 else 'lo') if task == 'classification' else round(y, 3)}"
        )
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "mlci.toml").write_text(
        f'[model]\nname = "m"\ntask = "{task}"\n[data]\npath = "data.csv"\ntarget = "y"\n'
        f'[split]\nholdout = 0.25\nseed = 1\n[estimator]\nclass = "{cls}"\nparams = {params}\n'
    )
    artifact = Path(run_pipeline(load_config(tmp_path / "mlci.toml")).artifact)
    runtime = ModelRuntime.load(artifact)
    float_outputs = {o.name: o.datatype for o in runtime.outputs if o.datatype.startswith("FP")}
    want_type = "FP32" if task == "classification" else "FP64"
    assert float_outputs and set(float_outputs.values()) == {want_type}, float_outputs
    assert {o["datatype"] for o in runtime.metadata()["outputs"] if o["name"] in float_outputs} == {want_type}
    feeds = {
        "x1": np.array([[1.0], [9.5]], dtype=np.float32),
        "x2": np.array([[3.0], [-4.0]], dtype=np.float32),
    }
    want = open_session(artifact / "model.onnx").run(None, feeds)
    got = runtime.run(feeds)
    for position, output in enumerate(runtime.outputs):
        if output.name in float_outputs:
            assert got[position].dtype == (np.float32 if want_type == "FP32" else np.float64)
            np.testing.assert_array_equal(got[position], want[position].astype(got[position].dtype))
