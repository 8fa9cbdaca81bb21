"""skl2onnx conversion that keeps scikit-learn's arithmetic: double precision inside, FP32 at the door.

Served numeric inputs are FP32 (the schema's contract; training data is rounded to FP32 on load).
Inside the graph they are cast to double so imputation and scaling compute exactly what scikit-learn
computes in float64. Tree models get a ``CastTransformer`` to float32 in front (scikit-learn trees cast
to float32 themselves), so split decisions match bit for bit. skl2onnx converts numeric ``SimpleImputer``
with the ``Imputer`` operator, which onnxruntime implements for float only; the converter registered
here emits ``IsNaN`` + ``Where`` for double inputs instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["convert_with_fallback", "register_converters"]

_registered = False


def _double_imputer(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.common._apply_operation import apply_concat
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        convert_sklearn_imputer(scope, operator, container)
        return
    imputer = operator.raw_operator
    if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
        convert_sklearn_imputer(scope, operator, container)
        return
    if len(operator.inputs) == 1:
        source = operator.inputs[0].full_name
    else:
        source = scope.get_unique_variable_name("imputer_in")
        apply_concat(scope, [i.full_name for i in operator.inputs], source, container, axis=1)
    fill = scope.get_unique_variable_name("imputer_fill")
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    container.add_initializer(fill, TensorProto.DOUBLE, [1, statistics.size], statistics.tolist())
    missing = scope.get_unique_variable_name("imputer_isnan")
    container.add_node("IsNaN", [source], [missing], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where", [missing, fill, source], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Where")
    )


def register_converters() -> None:
    """Install the double-aware SimpleImputer converter (idempotent)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    update_registered_converter(
        SimpleImputer, "SklearnSimpleImputer", calculate_sklearn_imputer_output_shapes, _double_imputer, overwrite=True
    )
    _registered = True


def _fp32_doors(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every DOUBLE graph input FLOAT and cast it to double right behind the door."""
    graph = model.graph
    casts = []
    for graph_input in graph.input:
        tensor = graph_input.type.tensor_type
        if tensor.elem_type != TensorProto.DOUBLE:
            continue
        inner = f"{graph_input.name}__f64"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == graph_input.name:
                    node.input[i] = inner
        for out in graph.output:  # an input passed straight through (unlikely, but keep the graph valid)
            if out.name == graph_input.name:
                raise ValueError(f"input {graph_input.name!r} is also a graph output")
        casts.append(helper.make_node("Cast", [graph_input.name], [inner], to=TensorProto.DOUBLE, name=f"fp32_door_{graph_input.name}"))
        tensor.elem_type = TensorProto.FLOAT
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    return model


def _canonical_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sort the opset imports by domain: skl2onnx emits them in set order, which varies between processes
    (PYTHONHASHSEED) and would make identical trainings differ by a few bytes and a digest."""
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    return model


def convert_with_fallback(
    estimator: Any,
    names_kinds: list[tuple[str, str]],
    name: str,
    opset: int,
    ml_opset: int,
    options: Any,
    optimise: bool = True,
) -> onnx.ModelProto:
    """Convert with double arithmetic inside; fall back to plain float32 when a converter needs it.

    The parity check decides afterwards whether the result is close enough. ``optimise=False`` skips
    skl2onnx's Identity-node removal, which is quadratic (2 s for a 100-tree IsolationForest) and
    redundant: onnxruntime removes Identity nodes itself when it loads the model.
    """
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    register_converters()
    errors: list[Exception] = []
    for numeric in (DoubleTensorType, FloatTensorType):
        types = [(n, numeric([None, 1]) if k == "numeric" else StringTensorType([None, 1])) for n, k in names_kinds]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = convert_sklearn(
                    estimator,
                    name=name,
                    initial_types=types,
                    options=options,
                    target_opset={"": opset, "ai.onnx.ml": ml_opset},
                    model_optim=optimise,
                )
            model = _canonical_opsets(_fp32_doors(model))
            # Prove onnxruntime can load it: some converters emit double ops it lacks.
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return model
        except Exception as exc:  # converters raise many exception types
            errors.append(exc)
    raise errors[-1] if len(errors) == 1 or "double" in str(errors[0]).lower() else errors[0]
