"""The served model: a verified artifact, its onnxruntime session, its V2 inputs/outputs, and warm-up.

Never imports an HTTP framework: the app hands it numpy feeds and gets numpy outputs back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto

from mlci.errors import DataError
from mlci.model.artifact import read_manifest, verify_artifact
from mlci.model.onnxio import open_session, refuse_external_data
from mlci.serving.errors import InvalidInput
from mlci.serving.packing import PACKED_INPUT, cast_outputs, index_labels, pack_numeric_inputs
from mlci.serving.protocol import Decoder, InputSpec, OutputSpec
from mlci.serving.tensors import BYTES, ClassLabels

__all__ = ["ModelInfo", "ModelRuntime", "model_info"]

# The OIP's platform name for "an ONNX model encoded for ONNX Runtime" (inference_rest.md, Platforms); Triton
# says onnxruntime_onnx, which V2 clients do not read either.
PLATFORM = "onnx_onnxv1"
# One datatype per kind of float output whatever the estimator computed in (skl2onnx gives a LogisticRegression's
# probabilities in double, a forest's in float): probabilities are FP32 (in [0, 1], so the error is below
# 6e-8), a regressor's values FP64 (a float32 value is exact in FP64, a double keeps its digits).
PROBABILITY_TYPE = TensorProto.FLOAT
VALUE_TYPE = TensorProto.DOUBLE

_ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": BYTES,
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the server knows from the manifest alone (before the session loads): name, digest, inputs."""

    name: str
    digest: str
    task: str
    inputs: tuple[InputSpec, ...]
    classes: tuple[Any, ...]

    @property
    def versions(self) -> tuple[str, str]:
        """The two spellings of the version a URL may use: ``sha256:<hex>`` and ``<hex>``."""
        return self.digest, self.digest.partition(":")[2]


def model_info(manifest: Mapping[str, Any]) -> ModelInfo:
    """Name, digest, task and inputs of an artifact, from its manifest."""
    schema = manifest.get("schema") or {}
    try:
        inputs = tuple(InputSpec(f["name"], f["kind"], f["datatype"]) for f in schema["features"])
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"The manifest's schema has no usable 'features' list ({exc!r}); rebuild the artifact."
        ) from exc
    return ModelInfo(
        name=str(manifest["name"]),
        digest=str(manifest["digest"]),
        task=str(manifest.get("task", schema.get("task", ""))),
        inputs=inputs,
        classes=tuple(schema.get("classes") or ()),
    )


class ModelRuntime:
    """An onnxruntime session over a verified artifact, with its decoder and output specs.

    The session takes the numeric features packed into one feature-major ``(n_numeric, rows)`` matrix (see
    :mod:`mlci.serving.packing`); :meth:`run` accepts the per-feature feeds ``model.onnx`` itself takes,
    :meth:`predict` the packed form.
    """

    def __init__(self, info: ModelInfo, model_bytes: bytes, *, threads: int = 1) -> None:
        self.info = info
        self.numeric = [s.name for s in info.inputs if s.kind == "numeric"]
        refuse_external_data(model_bytes, f"model.onnx of {info.name!r} ({info.digest})")
        original = open_session(model_bytes, threads=threads)
        taken = {i.name for i in original.get_inputs()}
        expected = {s.name for s in info.inputs}
        if taken != expected:
            raise DataError(
                f"model.onnx takes inputs {sorted(taken)}, but the manifest's schema lists {sorted(expected)}; "
                "the artifact is inconsistent. Rebuild it with `mlci run`."
            )
        packed = pack_numeric_inputs(model_bytes, self.numeric) if self.numeric else model_bytes
        # A classifier's string label output answers class indices instead (see packing.index_labels).
        label = next((o.name for o in original.get_outputs() if o.type == "tensor(string)"), None)
        float_type = PROBABILITY_TYPE if info.task == "classification" else VALUE_TYPE
        packed = cast_outputs(
            packed,
            {o.name: float_type for o in original.get_outputs() if o.type in ("tensor(float)", "tensor(double)")},
        )
        indexed = index_labels(packed, label) if label is not None and info.task == "classification" else None
        self.labels: ClassLabels | None = None
        self._label_position = -1
        if indexed is not None:
            packed, names = indexed
            self.labels = ClassLabels(names)
        self.session = open_session(packed, threads=threads)
        self.outputs = tuple(
            OutputSpec(
                o.name,
                BYTES if self.labels is not None and o.name == label else _ONNX_TO_V2.get(o.type, BYTES),
                tuple(d if isinstance(d, int) else -1 for d in o.shape),
            )
            for o in self.session.get_outputs()
        )
        self.output_names = [o.name for o in self.outputs]
        # the output whose class indices predict_indexed returns (None: labels are plain strings)
        self.label_output = label if self.labels is not None else None
        if self.labels is not None:
            self._label_position = self.output_names.index(label)
        self._checked = [(i, o.name) for i, o in enumerate(self.outputs) if o.datatype in ("FP32", "FP64")]
        self.decoder = Decoder(info.inputs, self.outputs)

    @classmethod
    def load(cls, artifact: Path, *, threads: int = 1, verify: bool = True) -> ModelRuntime:
        """Verify the artifact (every file hash and the digest), then open its model once."""
        manifest = verify_artifact(artifact) if verify else read_manifest(artifact)
        return cls(model_info(manifest), (artifact / "model.onnx").read_bytes(), threads=threads)

    def predict(self, numeric: np.ndarray | None, categorical: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs for a validated batch; refuses non-finite outputs (e.g. NaN the model cannot impute)."""
        results, index = self.predict_indexed(numeric, categorical)
        if index is not None and self.labels is not None:
            results[self._label_position] = self.labels.strings(index)
        return results

    def predict_indexed(
        self, numeric: np.ndarray | None, categorical: dict[str, np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """:meth:`predict`, except that the label output holds class *indices* when :attr:`labels` knows them
        (also returned second; None otherwise): the server turns them into names only where a response
        needs names, and writes, counts and binary-encodes the indices."""
        feeds = categorical if numeric is None else {PACKED_INPUT: numeric, **categorical}
        results: list[np.ndarray] = self.session.run(self.output_names, feeds)
        index = results[self._label_position] if self.labels is not None else None
        for position, name in self._checked:
            array = results[position]
            if not np.isfinite(array).all():
                bad = np.flatnonzero(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1))
                raise InvalidInput(
                    f"The model returned non-finite {name!r} for row(s) {bad[:10].tolist()}. Those rows hold "
                    "missing values (null/NaN) that this model does not impute; send complete rows."
                )
        return results, index

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for per-feature ``[N, 1]`` feeds, the form ``model.onnx`` takes."""
        numeric = (
            np.vstack([feeds[n].reshape(1, -1) for n in self.numeric]).astype(np.float32)
            if self.numeric
            else None
        )
        categorical = {s.name: feeds[s.name] for s in self.info.inputs if s.kind != "numeric"}
        return self.predict(numeric, categorical)

    def warm_up(self) -> list[np.ndarray]:
        """One inference on a typical row (zeros, missing categories), so the first request is not the slow one."""
        feeds = {
            s.name: (
                np.zeros((1, 1), dtype=np.float32) if s.kind == "numeric" else np.array([[""]], dtype=object)
            )
            for s in self.info.inputs
        }
        return self.run(feeds)

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata document."""
        return {
            "name": self.info.name,
            "versions": [self.info.digest],
            "platform": PLATFORM,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": [-1, 1]} for s in self.info.inputs],
            "outputs": [
                {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in self.outputs
            ],
            "parameters": {"task": self.info.task, "classes": list(self.info.classes)},
        }
