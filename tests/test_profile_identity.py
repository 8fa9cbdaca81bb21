"""The profile the digest covers is computed off onnxruntime, so a CPU's inference kernels cannot move it.

Portable numerics pin what numpy and OpenBLAS do (mlci/numerics.py), but onnxruntime's MLAS picks its
kernels from CPUID with no setting to hold it (onnxruntime core/mlas/lib/platform.cpp), so an ONNX output
can differ in its last bits between CPUs. profile.json is part of the identity: its prediction section
and the outlier threshold come from the scikit-learn pipelines (portable numerics) instead; what
onnxruntime measures (metrics, the held-out outlier rate) is evidence.

Here the other CPU's kernels are stood in for by a model.onnx whose weights are one float32 step away:
the ONNX outputs move by an ulp-sized amount, as another kernel's rounding moves them. The profile must
not move. (bench/qemu_cpus.py and tests/test_qemu_cpus.py run the real kernels of other CPUs.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlci.config import load_config
from mlci.model.artifact import evidence_of
from mlci.stages import evaluate_stage, export_stage, train_stage

from .conftest import ProjectFactory
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


@pytest.mark.parametrize("case", ["ridge", "logistic"])
def test_the_profile_does_not_come_from_onnxruntime(make_project: ProjectFactory, tmp_path: Path, case: str) -> None:
    task, target, estimator = CASES[case]
    config = load_config(make_project(estimator + "\n" + SCALED, task=task, target=target), tmp_path / "ws")
    dirs = {name: tmp_path / name for name in ("train", "export", "export_other_cpu", "a", "b")}
    train_stage(config, {}, dirs["train"])
    export_stage(config, {"train": dirs["train"]}, dirs["export"])
    shutil.copytree(dirs["export"], dirs["export_other_cpu"])
    assert nudge_weights(dirs["export_other_cpu"] / "model.onnx") > 0
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export"]}, dirs["a"])
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export_other_cpu"]}, dirs["b"])

    a, b = (json.loads((dirs[d] / "profile.json").read_text()) for d in ("a", "b"))
    assert a["prediction"] == b["prediction"]
    assert a["outlier"] == b["outlier"]
    assert (dirs["a"] / "profile.json").read_bytes() == (dirs["b"] / "profile.json").read_bytes()
    # The nudge is real: what onnxruntime measured on the two models differs (evidence, not identity).
    ea, eb = (evidence_of(json.loads((dirs[d] / "manifest.json").read_text())) for d in ("a", "b"))
    assert ea["metrics"] != eb["metrics"] or ea["parity"] != eb["parity"]
