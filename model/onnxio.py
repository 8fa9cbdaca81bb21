"""Feed a dataframe to an ONNX model and read its outputs, the same way everywhere (export, evaluate, serving)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from mlci.errors import DataError
from mlci.model.data import Schema

__all__ = [
    "Prediction",
    "external_tensors",
    "feeds_from_frame",
    "open_session",
    "predict",
    "refuse_external_data",
]


@dataclass(frozen=True)
class Prediction:
    """ONNX outputs: ``labels`` and ``probabilities`` (classification) or ``values`` (regression)."""

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None


def open_session(model: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; one intra-op thread by default (predictable latency, no oversubscription)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # (the default, said: the outputs feed the digest)
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def _node_tensors(nodes: Iterable[onnx.NodeProto], where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    for node in nodes:
        for attr in node.attribute:
            here = f"{where}node {node.name or node.op_type!r} attribute {attr.name!r}"
            sparse = [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]
            tensors = [*([attr.t] if attr.HasField("t") else []), *attr.tensors]
            tensors += [part for s in sparse for part in (s.values, s.indices)]
            yield from ((here, t) for t in tensors)
            for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                yield from _graph_tensors(sub, f"{here} > ")


def _graph_tensors(graph: onnx.GraphProto, where: str = "") -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor a graph holds: initializers, sparse initializers, node attributes, subgraphs."""
    yield from ((f"{where}initializer {t.name!r}", t) for t in graph.initializer)
    for sparse in graph.sparse_initializer:
        yield f"{where}sparse initializer {sparse.values.name!r}", sparse.values
        yield f"{where}sparse initializer {sparse.values.name!r}", sparse.indices
    yield from _node_tensors(graph.node, where)


def external_tensors(model: onnx.ModelProto) -> list[str]:
    """Where ``model`` keeps tensor data outside itself (ONNX *external data*): none for an mlci model."""
    places = chain(
        _graph_tensors(model.graph),
        *(_node_tensors(f.node, f"function {f.name!r} ") for f in model.functions),
    )
    return [
        f"{place} -> {next((e.value for e in t.external_data if e.key == 'location'), '?')!r}"
        for place, t in places
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)
    ]


def refuse_external_data(model_bytes: bytes, source: str) -> onnx.ModelProto:
    """The parsed model, or DataError if any tensor lives in an external file.

    onnxruntime resolves external-data locations against a directory (for a model given as bytes: the
    process's working directory), so such a model would read files it names (``mlci.toml``, ``.env``, ...)
    into its weights and hand them back through inference. mlci never writes external data.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise DataError(
            f"{source} is not a valid ONNX model ({type(exc).__name__}: {exc}). Rebuild the artifact."
        ) from None
    found = external_tensors(model)
    if found:
        shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        raise DataError(
            f"{source} keeps tensor data in external files ({shown}). mlci models never do, and such a model "
            "would read files from the machine it runs on; refusing it. Rebuild the artifact with `mlci run`."
        )
    return model


def feeds_from_frame(X: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """One [n, 1] tensor per feature: float32 for numeric, object (str) for categorical."""
    feeds: dict[str, np.ndarray] = {}
    for feature in schema.features:
        column = X[feature.name].to_numpy()
        if feature.kind == "numeric":
            feeds[feature.name] = column.astype(np.float32).reshape(-1, 1)
        else:
            feeds[feature.name] = column.astype(str).astype(object).reshape(-1, 1)
    return feeds


def predict(session: ort.InferenceSession, feeds: dict[str, np.ndarray], task: str) -> Prediction:
    """Run the model; classifiers are exported with label + probability-matrix outputs (no ZipMap)."""
    outputs = session.run(None, feeds)
    if task == "classification":
        return Prediction(
            labels=np.asarray(outputs[0]).ravel(), probabilities=np.asarray(outputs[1], dtype=np.float64)
        )
    return Prediction(values=np.asarray(outputs[0], dtype=np.float64).ravel())
