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
    np.testing.assert_array_equal(got[1], want[1])


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
    np.testing.assert_array_equal(results[1], want[1])
    assert (
        runtime.predict(packed, {k: v for k, v in feeds.items() if k not in numeric})[0].tolist()
        == want[0].tolist()
    )
