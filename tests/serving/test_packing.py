"""Packing the numeric inputs into one matrix changes nothing the model computes: bit-identical outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlci.model.onnxio import open_session
from mlci.serving.packing import PACKED_INPUT, index_labels, is_fused, pack_numeric_inputs
from mlci.serving.tensors import BYTES, ClassLabels, binary_tensor


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
    packed_feeds = {PACKED_INPUT: np.vstack([feeds[n].T for n in numeric])} | {
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


@pytest.mark.parametrize("which", ["bc", "mixed"])
def test_mlci_graphs_take_the_fused_form(which: str, bc_artifact: Path, mixed_artifact: Path) -> None:
    """The exported graphs cast each numeric input into one Concat: packing fuses them into one Cast."""
    artifact = bc_artifact if which == "bc" else mixed_artifact
    raw = (artifact / "model.onnx").read_bytes()
    numeric = [i.name for i in open_session(raw).get_inputs() if i.type == "tensor(float)"]
    packed = pack_numeric_inputs(raw, numeric)
    assert is_fused(packed)
    before, after = (len(onnx.load_from_string(m).graph.node) for m in (raw, packed))
    # k casts out, one in (and the Concat gone too when it held only them)
    assert after <= before - len(numeric) + 1


def _toy(concat_inputs: list[str], *, saturate_b: bool = False, extra_use: bool = False) -> bytes:
    """a, b, c (float [N,1]) -> Cast each -> Concat(concat_inputs) -> MatMul by [[1],[10],(100)] -> y."""
    b_cast = {"saturate": 1} if saturate_b else {}
    nodes = [
        helper.make_node("Cast", ["a"], ["a64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["b"], ["b64"], to=TensorProto.DOUBLE, **b_cast),
        helper.make_node("Cast", ["c"], ["c64"], to=TensorProto.DOUBLE),
        helper.make_node("Concat", concat_inputs, ["m"], axis=1),
        helper.make_node("Cast", ["m"], ["m64"], to=TensorProto.DOUBLE),
        helper.make_node("MatMul", ["m64", "w"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])]
    if extra_use:
        nodes.append(helper.make_node("Identity", ["a64"], ["a_again"]))
        outputs.append(helper.make_tensor_value_info("a_again", TensorProto.DOUBLE, [None, 1]))
    weights = numpy_helper.from_array(np.array([[1.0], [10.0], [100.0]][: len(concat_inputs)]), name="w")
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in ("a", "b", "c")],
        outputs,
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("concat_inputs", "kwargs", "fused"),
    [
        (["a64", "b64"], {}, True),  # c unused by the concat: c is not packed below either
        (["c64", "a64", "b64"], {}, True),  # the packed run sits inside a longer concat
        (["b64", "a64"], {}, False),  # swapped: fusing would swap the columns
        (["a64", "c64", "b64"], {}, False),  # not side by side
        (["a64", "b64"], {"saturate_b": True}, False),  # casts with different attributes
        (["a64", "b64"], {"extra_use": True}, False),  # a cast output read elsewhere too
    ],
)
def test_fusion_only_where_it_keeps_every_value(
    concat_inputs: list[str], kwargs: dict[str, Any], fused: bool
) -> None:
    raw = _toy(concat_inputs, **kwargs)
    packed = pack_numeric_inputs(raw, ["a", "b"])
    assert is_fused(packed) is fused
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=(9, 1)).astype(np.float32) for _ in range(3))
    a[2] = np.nan
    original = open_session(raw).run(None, {"a": a, "b": b, "c": c})
    got = open_session(packed).run(None, {PACKED_INPUT: np.vstack([a.T, b.T]), "c": c})
    for want, have in zip(original, got, strict=True):
        np.testing.assert_array_equal(want, have)


def _string_label_graph(from_initializer: bool) -> bytes:
    """x (float [N,2]) -> ArgMax -> label: ArrayFeatureExtractor over a class initializer, or over an input."""
    nodes = [
        helper.make_node("ArgMax", ["x"], ["idx"], axis=1),
        helper.make_node("ArrayFeatureExtractor", ["classes", "idx"], ["picked"], domain="ai.onnx.ml"),
        helper.make_node("Reshape", ["picked", "flat"], ["label"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])]
    initializers = [numpy_helper.from_array(np.array([-1], dtype=np.int64), name="flat")]
    if from_initializer:
        initializers.append(
            helper.make_tensor("classes", TensorProto.STRING, [2], [b"no", "s\u00ed".encode()])
        )
    else:
        inputs.append(helper.make_tensor_value_info("classes", TensorProto.STRING, [2]))
    graph = helper.make_graph(
        nodes,
        "labels",
        inputs,
        [helper.make_tensor_value_info("label", TensorProto.STRING, [None])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    return model.SerializeToString()


def test_index_labels_answers_indices_of_the_same_classes() -> None:
    raw = _string_label_graph(from_initializer=True)
    indexed = index_labels(raw, "label")
    assert indexed is not None
    model_bytes, names = indexed
    assert names == ("no", "s\u00ed")
    x = np.array([[0.0, 1.0], [2.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    want = open_session(raw).run(None, {"x": x})[0]
    got = open_session(model_bytes).run(None, {"x": x})[0]
    assert got.dtype == np.int64
    assert [names[i] for i in got] == want.tolist() == ["s\u00ed", "no", "no"]
    assert "classes" not in {i.name for i in onnx.load_from_string(model_bytes).graph.initializer}


def test_index_labels_declines_other_graphs() -> None:
    assert index_labels(_string_label_graph(from_initializer=False), "label") is None  # classes not constant
    assert index_labels(_toy(["a64", "b64"]), "y") is None  # not a label at all


def test_class_labels_encode_and_count_like_the_strings() -> None:
    labels = ClassLabels(("benign", "malignant", "\u00fcber"))
    index = np.array([2, 0, 0, 1, 2, 2], dtype=np.int64)
    strings = labels.strings(index)
    assert strings.tolist() == ["\u00fcber", "benign", "benign", "malignant", "\u00fcber", "\u00fcber"]
    assert labels.binary(index) == binary_tensor(BYTES, strings)
    assert labels.counts(index) == [("benign", 2), ("malignant", 1), ("\u00fcber", 3)]
    assert labels.counts(np.array([1])) == [("malignant", 1)]  # classes never predicted are left out
