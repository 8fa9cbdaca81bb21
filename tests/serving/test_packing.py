"""Packing the numeric inputs into one matrix changes nothing the model computes: bit-identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlci.model.onnxio import open_session
from mlci.serving.packing import PACKED_INPUT, pack_numeric_inputs


@pytest.mark.parametrize("which", ["bc", "mixed"])
def test_packed_model_is_bit_identical(which: str, bc_artifact: Path, mixed_artifact: Path) -> None:
    artifact = bc_artifact if which == "bc" else mixed_artifact
    raw = (artifact / "model.onnx").read_bytes()
    original = open_session(raw)
    inputs = original.get_inputs()
    numeric = [i.name for i in inputs if i.type == "tensor(float)"]
    rng = np.random.default_rng(0)
    rows = 257
    feeds = {
        i.name: (
            rng.normal(size=(rows, 1)).astype(np.float32) * 100
            if i.type == "tensor(float)"
            else rng.choice(np.array(["red", "green", "blue", "", "unseen"], dtype=object), size=(rows, 1))
        )
        for i in inputs
    }
    if numeric:
        feeds[numeric[0]][::7] = np.nan  # missing values go through the imputer in both forms
    packed = open_session(pack_numeric_inputs(raw, numeric))
    assert [i.name for i in packed.get_inputs()] == [PACKED_INPUT] + [
        i.name for i in inputs if i.name not in numeric
    ]
    packed_feeds = {PACKED_INPUT: np.hstack([feeds[n] for n in numeric])} | {
        k: v for k, v in feeds.items() if k not in numeric
    }
    for want, got in zip(original.run(None, feeds), packed.run(None, packed_feeds), strict=True):
        assert want.dtype == got.dtype
        np.testing.assert_array_equal(want, got)


def test_refuses_unknown_or_non_float_inputs(mixed_artifact: Path) -> None:
    raw = (mixed_artifact / "model.onnx").read_bytes()
    with pytest.raises(ValueError, match="no inputs"):
        pack_numeric_inputs(raw, ["nope"])
    with pytest.raises(ValueError, match=r"'color' of model\.onnx is not float32"):
        pack_numeric_inputs(raw, ["color"])
