"""Serve a per-feature ONNX model through one numeric matrix input, without changing what it computes.

An mlci model takes one ``[N, 1]`` input per feature. Feeding 30 separate tensors costs onnxruntime's
Python binding about a microsecond each, per request. At load time the server prepends one ``Split``
node that cuts a single ``[N, n_numeric]`` float32 input into the original per-feature tensors, under
their original names: every downstream node sees exactly the tensors it saw before, so outputs are
bit-identical (tests/serving/test_packing.py checks that). The artifact on disk is untouched; its hashes
are verified before the rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["PACKED_INPUT", "pack_numeric_inputs"]

PACKED_INPUT = "mlci_numeric"


def pack_numeric_inputs(model_bytes: bytes, numeric: Sequence[str]) -> bytes:
    """``model_bytes`` with the float inputs named in ``numeric`` replaced by one ``[N, len(numeric)]`` input."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    missing = [n for n in numeric if n not in by_name]
    if missing:
        raise ValueError(f"model.onnx has no inputs {missing}; it takes {sorted(by_name)}.")
    for name in numeric:
        if by_name[name].type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"Input {name!r} of model.onnx is not float32; it cannot be packed.")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    count = len(numeric)
    if opset >= 18:
        split = helper.make_node(
            "Split", [PACKED_INPUT], list(numeric), axis=1, num_outputs=count, name="mlci_pack"
        )
    elif opset >= 13:
        sizes = numpy_helper.from_array(np.ones(count, dtype=np.int64), name="mlci_pack_sizes")
        graph.initializer.append(sizes)
        split = helper.make_node("Split", [PACKED_INPUT, sizes.name], list(numeric), axis=1, name="mlci_pack")
    else:
        split = helper.make_node(
            "Split", [PACKED_INPUT], list(numeric), axis=1, split=[1] * count, name="mlci_pack"
        )
    kept = [i for i in graph.input if i.name not in set(numeric)]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(PACKED_INPUT, TensorProto.FLOAT, [None, count]), *kept])
    graph.node.insert(0, split)
    packed: bytes = model.SerializeToString()
    return packed
