"""A crafted model.onnx whose weights live in ONNX *external data* must not be served.

onnxruntime resolves an external-data location against a directory; for a model given as bytes (as the
server gives it) that is the process's working directory, so the attack below made the server read
``secret.bin`` from its cwd into the model's coefficients and answer with predictions computed from it.
The artifact is re-sealed (file hashes and digest recomputed), so `verify` alone does not catch it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from mlci.canonical import sha256_file
from mlci.errors import DataError
from mlci.model.artifact import seal, verify_artifact
from mlci.model.onnxio import external_tensors, refuse_external_data
from mlci.serving.runtime import ModelRuntime


def reseal(artifact: Path) -> None:
    """Make the manifest agree with the files again, as an attacker who can write the artifact would."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry["sha256"] = sha256_file(artifact / name)
        entry["size"] = (artifact / name).stat().st_size
    seal(manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def point_outside(tensor: onnx.TensorProto, location: str, length: int) -> None:
    """Store ``tensor``'s data as ONNX external data at ``location`` (what an attacker writes by hand)."""
    for field in ("raw_data", "float_data", "double_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def externalise(artifact: Path, out: Path, location: str) -> tuple[Path, bytes]:
    """A copy of ``artifact`` whose largest float initializer is read from ``location``; the bytes it needs."""
    shutil.copytree(artifact, out)
    model = onnx.load(out / "model.onnx")
    floats = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]
    tensor = max(floats, key=lambda t: numpy_helper.to_array(t).size)
    raw = numpy_helper.to_array(tensor).tobytes()
    point_outside(tensor, location, len(raw))
    (out / "model.onnx").write_bytes(model.SerializeToString())
    reseal(out)
    return out, raw


def test_crafted_artifact_passes_verify_but_is_found(bc_artifact: Path, tmp_path: Path) -> None:
    crafted, _ = externalise(bc_artifact, tmp_path / "crafted", "secret.bin")
    verify_artifact(crafted)  # self-consistent: the hashes alone cannot tell
    found = external_tensors(onnx.load(crafted / "model.onnx", load_external_data=False))
    assert len(found) == 1 and "'secret.bin'" in found[0]
    assert external_tensors(onnx.load(bc_artifact / "model.onnx")) == []


def test_runtime_refuses_external_data(bc_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crafted, raw = externalise(bc_artifact, tmp_path / "crafted", "secret.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(raw)  # exactly what the weights need: old code loaded and served it
    with pytest.raises(DataError, match=r"external files .*secret\.bin.*refusing"):
        ModelRuntime.load(crafted)


def test_external_data_in_a_subgraph_is_found() -> None:
    """Tensors in node attributes and subgraphs (an If's branches) are walked too."""
    inner = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    point_outside(inner, "../x", 4)
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["y"], value=inner)],
        "branch",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    node = onnx.helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph)
    assert len(external_tensors(model)) == 2
    with pytest.raises(DataError, match="external files"):
        refuse_external_data(model.SerializeToString(), "model.onnx")


def test_not_an_onnx_model_is_a_data_error() -> None:
    with pytest.raises(DataError, match="not a valid ONNX model"):
        refuse_external_data(b"\xff" * 64, "model.onnx")


def test_mlci_serve_refuses_it_and_reads_nothing(bc_artifact: Path, tmp_path: Path) -> None:
    """The real command, run where the file it names exists: exit 2, the reason named, never ready."""
    crafted, raw = externalise(bc_artifact, tmp_path / "crafted", "secret.bin")
    (tmp_path / "secret.bin").write_bytes(raw)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlci"), "serve", str(crafted), "--port", "0", "--no-log"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "external files" in result.stderr and "secret.bin" in result.stderr
