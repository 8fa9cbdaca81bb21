"""`mlci verify ARTIFACT --against OTHER` on real builds of the bundled example.

Each artifact is built by `mlci run` in a subprocess (so OPENBLAS_CORETYPE reaches OpenBLAS before it
loads, as in the issue's experiment): `make test-slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import numpy_helper

from mlci.canonical import sha256_file, write_json
from mlci.model.artifact import seal

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "breast_cancer"


def mlci(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlci", *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def build(root: Path, name: str, env: dict[str, str] | None = None, edit: tuple[str, str] | None = None) -> Path:
    """The bundled example copied to root/name (mlci.toml edited by ``edit``), trained; its artifact."""
    src = root / name
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(".mlci"))
    if edit:
        toml = src / "mlci.toml"
        text = toml.read_text()
        assert edit[0] in text
        toml.write_text(text.replace(*edit))
    done = mlci("run", "--until", "evaluate", "--json", cwd=src, env=env)
    assert done.returncode == 0, done.stderr
    return Path(json.loads(done.stdout)["artifact"])


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builds")
    return {
        "prescott": build(root, "prescott", {"OPENBLAS_CORETYPE": "Prescott"}),
        "skylakex": build(root, "skylakex", {"OPENBLAS_CORETYPE": "SkylakeX"}),
        "other_c": build(root, "other_c", edit=("C = 1.0", "C = 0.01")),
        "dropped": build(root, "dropped", edit=('target = "target"', 'target = "target"\ndrop = ["mean_radius"]')),
    }


def verify(artifact: Path, other: Path, *extra: str | Path) -> tuple[int, dict[str, Any] | None, str]:
    """(exit code, the --json report or None, stderr), from the example's directory (its mlci.toml)."""
    done = mlci("verify", artifact, "--against", other, "--json", *extra, cwd=EXAMPLE)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def resigned_copy(artifact: Path, out: Path) -> Path:
    """``artifact`` with the coefficients (its largest float tensor) moved in the 10th digit, its manifest's
    hashes and digest redone: what another CPU's BLAS kernel gives (different bytes, the same function),
    whatever this machine does."""
    shutil.copytree(artifact, out)
    model = onnx.load(str(out / "model.onnx"))
    floats = [i for i in model.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f"]
    init = max(floats, key=lambda i: numpy_helper.to_array(i).size)
    values = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((values * (1 + 1e-10)).astype(values.dtype), init.name))
    onnx.save(model, str(out / "model.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(out / "model.onnx"), "size": (out / "model.onnx").stat().st_size}
    write_json(out / "manifest.json", seal(manifest))
    return out


def test_two_cpu_kernels_give_equivalent_artifacts(builds: dict[str, Path]) -> None:
    """The issue's case: OpenBLAS's Prescott and SkylakeX kernels. Equivalent whether or not the bytes
    differ (with portable numerics they are one build; without, model.onnx differs in the last bits)."""
    code, report, err = verify(builds["prescott"], builds["skylakex"])
    assert code == 0, err
    assert report is not None and report["equivalent"] is True and report["differed"] == []
    if not report["identical"]:
        assert report["notes"][0] == "bytes differ: model.onnx"
        p = report["predictions"]
        assert p["label_agreement"] == 1.0 and p["rows"] == 156 and p["max_abs_diff"] <= p["abs_tolerance"] == 1e-5


def test_different_bytes_of_the_same_function_are_equivalent(builds: dict[str, Path], tmp_path: Path) -> None:
    other = resigned_copy(builds["prescott"], tmp_path / "resigned")
    code, report, err = verify(builds["prescott"], other)
    assert code == 0, err
    assert report is not None and report["equivalent"] and not report["identical"]
    assert report["notes"] == ["bytes differ: model.onnx"]
    assert {"data digest", "config digest", "factory code digest"} <= set(report["matched"])
    p = report["predictions"]
    assert 0 < p["max_abs_diff"] < 1e-8 and p["label_agreement"] == 1.0 and p["within_tolerance"]
    text = mlci("verify", builds["prescott"], "--against", other, cwd=EXAMPLE)
    assert text.returncode == 0 and text.stdout.startswith("equivalent: sha256:")
    assert "labels 100.0% equal" in text.stdout and "max abs diff" in text.stdout


def test_another_c_is_not_equivalent_and_says_by_how_much(builds: dict[str, Path]) -> None:
    code, report, err = verify(builds["prescott"], builds["other_c"])
    assert code == 1, err
    assert report is not None and report["equivalent"] is False
    assert any(d.startswith("config digest: ") for d in report["differed"])
    p = report["predictions"]
    assert p["max_abs_diff"] > 1e-3 and not p["within_tolerance"]
    assert any(d.startswith("predictions on 156 holdout rows: max abs diff") for d in report["differed"])
    assert "are not functionally equivalent: config digest" in err
    text = mlci("verify", builds["prescott"], "--against", builds["other_c"], cwd=EXAMPLE)
    assert text.returncode == 1 and text.stdout.startswith("NOT equivalent: ")
    assert "  differs  predictions on 156 holdout rows: max abs diff" in text.stdout


def test_a_different_schema_is_not_equivalent(builds: dict[str, Path]) -> None:
    code, report, err = verify(builds["prescott"], builds["dropped"])
    assert code == 1, err
    assert report is not None and "schema: features only in ARTIFACT: mean_radius" in report["differed"]
    assert report["predictions"] is None
    assert "predictions not compared: the models take or give different things" in report["notes"]


def test_not_an_artifact_is_bad_input(builds: dict[str, Path], tmp_path: Path) -> None:
    code, report, err = verify(builds["prescott"], tmp_path)
    assert code == 2 and report is None
    assert f"'{tmp_path}' is not an mlci artifact: it has no manifest.json" in err


def test_a_tampered_artifact_is_bad_input(builds: dict[str, Path], tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(builds["skylakex"], tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-1] ^= 1
    (tampered / "model.onnx").write_bytes(bytes(data))
    code, report, err = verify(builds["prescott"], tampered)
    assert code == 2 and report is None
    assert "model.onnx in" in err and "the file was changed or corrupted" in err


def test_a_data_file_the_artifact_was_not_trained_on_is_bad_input(builds: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "data.csv"
    lines = (EXAMPLE / "data.csv").read_text().splitlines(keepends=True)
    other.write_text("".join(lines[:-1]))
    other_copy = resigned_copy(builds["prescott"], tmp_path / "resigned")
    code, report, err = verify(builds["prescott"], other_copy, "--data", other)
    assert code == 2 and report is None
    assert "is not the data file" in err and "Pass that file with --data" in err
    code, _, err = verify(builds["prescott"], other_copy, "--data", tmp_path / "missing.csv")
    assert code == 2 and "does not exist" in err
