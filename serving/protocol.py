"""Open Inference Protocol (KServe V2 REST) requests and responses, checked against a model's inputs.

Pure: bytes in, numpy arrays out, and back. No HTTP framework and no onnxruntime here.

Both the JSON form (``"data": [...]``) and Triton's binary tensor extension (``parameters.binary_data_size``
plus the ``Inference-Header-Content-Length`` header, what ``tritonclient.http`` sends by default) are read;
outputs are written as JSON or binary as the request asks (``binary_data_output`` / ``outputs[].parameters``).

Missing and non-finite values, the policy:

- ``null`` in a numeric input, or NaN in binary FP16/FP32/FP64 data, is a *missing value*. It reaches the
  model as NaN, which mlci models impute (training median), exactly like an empty cell in the training CSV.
- ``null`` in a BYTES input is a missing category (``''``), as are the spellings that mean "missing" in the
  training data: ``''``, ``na``, ``nan``, ``null``, ``none``, ``n/a`` in any case; surrounding spaces are
  stripped, as in training.
- ``+inf``/``-inf`` (binary data, or a JSON number beyond the float32 range) are rejected with 422 naming the
  input and the element: no training row held one, so the model's answer would be meaningless.
- JSON has no NaN/Infinity literals, but Python's ``json.dumps`` (and ``tritonclient`` in JSON mode) writes
  them, so they are read as such: ``NaN`` is a missing value like ``null``, ``Infinity``/``-Infinity`` get the
  422 above. A body is first parsed by orjson; only one it refuses and that holds such a literal is parsed
  again by the standard library, so the common path pays nothing.

Binary tensor data follows the JSON header in the order the inputs are listed in the JSON (Triton's
``extension_binary_data.md``), whatever the model's schema order; status 400 means "not a V2 request", 422
"a V2 request that does not fit this model" (an unknown or missing input or output, datatype, shape, value).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson

from mlci.serving.errors import BadRequest, InvalidInput
from mlci.serving.tensors import (
    BYTES,
    KNOWN_DATATYPES,
    NUMBER_TYPES,
    NUMERIC_DATATYPES,
    NUMERIC_LIST,
    binary_tensor,
    categories_from_binary,
    categories_from_json,
    json_type,
    numbers_from_binary,
    numbers_from_json,
    reject_infinite,
    show,
)

__all__ = ["Decoder", "InferRequest", "InputSpec", "OutputSpec", "encode_response"]

_NAME = itemgetter("name")
_DATATYPE = itemgetter("datatype")
_SHAPE = itemgetter("shape")
_DATA = itemgetter("data")
_EXAMPLE = '{"inputs": [{"name": "<feature>", "datatype": "FP32", "shape": [1], "data": [0.5]}, ...]}'


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: a feature name, its kind (numeric | categorical) and its V2 datatype."""

    name: str
    kind: str
    datatype: str


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One model output as the metadata endpoint describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.5 µs more to build, per request
class InferRequest:
    """A decoded, validated request (read-only by convention).

    ``numeric`` holds every numeric feature as one C-contiguous float32 ``(n_numeric, rows)`` matrix,
    feature-major in schema order (None when the model has no numeric feature); ``categorical`` holds one ``(rows, 1)``
    object array per categorical feature and ``categories`` the same values as lists (what the prediction
    log writes; it writes ``numeric`` as it is).
    """

    id: str | None
    rows: int
    numeric: np.ndarray | None
    categorical: dict[str, np.ndarray]
    categories: dict[str, list[str]]
    outputs: tuple[tuple[str, bool], ...] | None
    binary_output: bool


# The fast paths: the request shapes well-behaved clients send, decoded and type-checked in C by msgspec.
# Anything else (a null, nested data, an extra field, a wrong type...) fails to decode here and takes the
# general path, which accepts every valid variant and names the field of every error.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# JSON integers are accepted (as floats); booleans, strings, nulls and numbers beyond float32 are not.
_Float32 = Annotated[float, msgspec.Meta(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]


class _PlainTensor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    datatype: Literal["FP32"]
    shape: list[int]
    data: list[_Float32]


class _PlainRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    inputs: list[_PlainTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Any] | None = None
    model_name: str | None = None  # not in the OIP request, but kserve's and Triton's clients send it


class _BinarySize(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    binary_data_size: int


class _BinaryTensor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    datatype: Literal["FP32"]
    shape: list[int]
    parameters: _BinarySize


class _BinaryRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    inputs: list[_BinaryTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Any] | None = None
    model_name: str | None = None  # not in the OIP request, but kserve's and Triton's clients send it


_PLAIN = msgspec.json.Decoder(_PlainRequest)
_BINARY = msgspec.json.Decoder(_BinaryRequest)
_FP32 = np.dtype("<f4")


_NON_FINITE = re.compile(rb"NaN|Infinity")


def _int_or_float(text: str) -> int | float:
    """A JSON integer as orjson reads it: an int within 64 bits, else a float (never a 5,000-digit int)."""
    return int(text) if len(text) <= 18 else float(text)


def _loads(body: bytes) -> Any:
    """The JSON document of a request; the standard library's parser only for NaN/Infinity literals."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if _NON_FINITE.search(body) is not None:
        try:
            doc = json.loads(body, parse_int=_int_or_float)
            # What orjson would refuse to write again (a lone surrogate, nesting beyond its depth limit) is
            # refused here, so nothing later (the log, an error message) meets it.
            orjson.dumps(doc)
            return doc
        except (ValueError, TypeError, RecursionError):
            pass
    raise BadRequest(
        f"The request body is not valid JSON ({error}). Send a V2 inference request: {_EXAMPLE}"
    ) from None


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Decoder:
    """Decodes V2 inference requests for one model; built once, used for every request."""

    def __init__(self, inputs: Sequence[InputSpec], outputs: Sequence[OutputSpec]) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._specs = {spec.name: spec for spec in self.inputs}
        self._numeric = tuple(s.name for s in self.inputs if s.kind == "numeric")
        self._categorical = tuple(s.name for s in self.inputs if s.kind != "numeric")
        self._output_names = tuple(o.name for o in self.outputs)
        self._datatypes = [s.datatype for s in self.inputs]
        self._name_set = frozenset(self._specs)
        self._names = [s.name for s in self.inputs]
        self._all_numeric = len(self._numeric) == len(self.inputs)
        # The fast paths serve models whose inputs are all FP32 features (the packed matrix as sent).
        self._fast = self._all_numeric and bool(self.inputs) and set(self._datatypes) == {"FP32"}

    # -- request level -------------------------------------------------------------------------------

    def decode(self, body: bytes, header_length: int | None = None) -> InferRequest:
        """Parse and validate a request body; raise BadRequest (400) or InvalidInput (422) naming the field."""
        binary: memoryview | bytes = b""
        if header_length is not None:
            if not 0 <= header_length <= len(body):
                raise BadRequest(
                    f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes; "
                    "it must be the length of the JSON part that starts the body."
                )
            binary = memoryview(body)[header_length:]
            body = body[:header_length]
            fast = self._fast_binary(body, binary) if self._fast else None
        else:
            fast = self._fast_plain(body) if self._fast else None
        if fast is not None:
            return fast
        doc = _loads(body)
        if type(doc) is not dict:
            raise BadRequest(f"The request body must be a JSON object; got {json_type(doc)}. Send {_EXAMPLE}")
        request_id = doc.get("id")
        if request_id is not None and type(request_id) is not str:
            raise BadRequest(f"'id' must be a string; got {show(request_id)} ({json_type(request_id)}).")
        binary_output = self._request_parameters(doc.get("parameters"))
        outputs = self._requested_outputs(doc.get("outputs"), binary_output)
        inputs = doc.get("inputs")
        items = self._items(inputs)
        # Clients usually send the inputs in schema order: then the dict is already in order.
        ordered = (
            list(items.values()) if list(items) == self._names else [items[name] for name in self._names]
        )
        plain = None if binary else self._plain_rows(ordered)
        numeric = None
        if plain is not None:
            rows, datas = plain
            if self._all_numeric:
                numeric = self._fast_numeric(datas, rows)
                sources = {} if numeric is not None else dict(zip(self._names, datas, strict=True))
            else:
                sources = dict(zip(self._names, datas, strict=True))
                numeric = self._fast_numeric([sources[n] for n in self._numeric], rows)
        else:
            rows, sources = self._shapes(items, binary)
        if numeric is None and self._numeric:
            numeric = self._numeric_matrix(items, sources, rows)
        categorical: dict[str, np.ndarray] = {}
        categories: dict[str, list[str]] = {}
        for name in self._categorical:
            spec_item = items[name]
            source = sources[name]
            values = (
                categories_from_binary(name, source, rows)
                if isinstance(source, memoryview)
                else categories_from_json(name, spec_item["shape"], source, rows)
            )
            categorical[name] = np.array(values, dtype=object).reshape(rows, 1)
            categories[name] = values
        return InferRequest(request_id, rows, numeric, categorical, categories, outputs, binary_output)

    def _fast_plain(self, body: bytes) -> InferRequest | None:
        """Every input plain JSON numbers, in schema order, one common shape: or None (general path)."""
        decoded = self._fast_decode(_PLAIN, body)
        if decoded is None:
            return None
        request, rows = decoded
        datas = [t.data for t in request.inputs]
        count = len(datas)
        if list(map(len, datas)).count(rows) != count:
            return None
        # Python float (double) -> float32, as everywhere; in range, so finite (msgspec checked every value)
        numeric = np.fromiter(chain.from_iterable(datas), np.float32, count * rows).reshape(count, rows)
        return self._fast_request(request, rows, numeric)

    def _fast_binary(self, header: bytes, binary: memoryview | bytes) -> InferRequest | None:
        """Every input FP32 binary data of one common shape, back to back in schema order: or None."""
        decoded = self._fast_decode(_BINARY, header)
        if decoded is None:
            return None
        request, rows = decoded
        count = len(request.inputs)
        sizes = [t.parameters.binary_data_size for t in request.inputs]
        if sizes.count(rows * 4) != count or len(binary) != rows * 4 * count:
            return None
        numeric = np.frombuffer(binary, dtype=_FP32).reshape(count, rows)  # the body itself, no copy
        if np.isinf(numeric).any():
            return None  # NaN is a missing value; infinity is refused, by name, on the general path
        return self._fast_request(request, rows, numeric)

    def _fast_decode(self, decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[Any, int] | None:
        """The request and its batch size if it decodes with ``decoder``, names the inputs in schema order
        and gives them one shape ([N] or [N, 1], N > 0); else None."""
        try:
            request = decoder.decode(body)
        except (msgspec.DecodeError, ValueError, RecursionError):  # ValueError: invalid UTF-8 in a string
            return None
        tensors = request.inputs
        if [t.name for t in tensors] != self._names:
            return None
        shape = tensors[0].shape
        rows = self._fast_rows(shape)
        if not rows or [t.shape for t in tensors].count(shape) != len(tensors):
            return None
        return request, rows

    @staticmethod
    def _fast_rows(shape: list[int]) -> int:
        """The batch size of a fast-path shape ([N] or [N, 1], N > 0); 0 if the shape needs the general path."""
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return shape[0] if shape[0] > 0 else 0
        return 0

    def _fast_request(
        self, request: _PlainRequest | _BinaryRequest, rows: int, numeric: np.ndarray
    ) -> InferRequest:
        binary_output = self._request_parameters(request.parameters)
        outputs = self._requested_outputs(request.outputs, binary_output)
        return InferRequest(request.id, rows, numeric, {}, {}, outputs, binary_output)

    @staticmethod
    def _request_parameters(parameters: Any) -> bool:
        if parameters is None:
            return False
        if type(parameters) is not dict:
            raise BadRequest(
                f"'parameters' must be a JSON object; got {show(parameters)} ({json_type(parameters)})."
            )
        flag = parameters.get("binary_data_output", False)
        if type(flag) is not bool:
            raise BadRequest(f"parameters.binary_data_output must be true or false; got {show(flag)}.")
        return flag

    def _requested_outputs(self, outputs: Any, binary_output: bool) -> tuple[tuple[str, bool], ...] | None:
        """(name, as binary) per requested output; an output's ``binary_data`` overrides the request's
        ``binary_data_output``, which applies to every output that does not say."""
        if outputs is None:
            return None
        if type(outputs) is not list:
            raise BadRequest(
                f"'outputs' must be a list of {{\"name\": ...}} objects; got {json_type(outputs)}."
            )
        chosen: list[tuple[str, bool]] = []
        seen: set[str] = set()
        for i, item in enumerate(outputs):
            name = item.get("name") if type(item) is dict else None
            if type(name) is not str:
                raise BadRequest(f"outputs[{i}] must be an object with a 'name' string; got {show(item)}.")
            if name not in self._output_names:
                raise InvalidInput(
                    f"Output {name!r} (outputs[{i}]) does not exist. Available outputs are {_names(self._output_names)}."
                )
            if name in seen:
                raise InvalidInput(
                    f"Output {name!r} is requested twice in 'outputs'; request each output once."
                )
            seen.add(name)
            parameters = item.get("parameters")
            if parameters is not None and type(parameters) is not dict:
                raise BadRequest(f"outputs[{i}].parameters must be a JSON object; got {show(parameters)}.")
            flag = (parameters or {}).get("binary_data", binary_output)
            if type(flag) is not bool:
                raise BadRequest(
                    f"outputs[{i}].parameters.binary_data must be true or false; got {show(flag)}."
                )
            chosen.append((name, flag))
        return tuple(chosen)

    def _items(self, inputs: Any) -> dict[str, dict[str, Any]]:
        if type(inputs) is not list:
            if inputs is None:
                raise BadRequest(f"The request has no 'inputs'. Send one tensor per feature: {_EXAMPLE}")
            raise BadRequest(f"'inputs' must be a list of tensors; got {json_type(inputs)}. Send {_EXAMPLE}")
        # Fast path, C-level calls only: a list of objects naming every input exactly once.
        if list(map(type, inputs)).count(dict) == len(inputs):
            try:
                names = list(map(_NAME, inputs))
            except KeyError:
                names = []
            if (
                len(names) == len(self._name_set)
                and list(map(type, names)).count(str) == len(names)
                and self._name_set.issuperset(names)
            ):
                items = dict(zip(names, inputs, strict=True))
                if len(items) == len(names):
                    return items
        items = {}
        specs = self._specs
        for i, item in enumerate(inputs):
            if type(item) is not dict:
                raise BadRequest(
                    f"inputs[{i}] must be an object with name, datatype, shape and data; got {json_type(item)}."
                )
            name = item.get("name")
            if type(name) is not str:
                raise BadRequest(f"inputs[{i}] has no 'name' string; got {show(name)}.")
            if name not in specs:
                hint = difflib.get_close_matches(name, list(specs), n=1)
                did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
                raise InvalidInput(
                    f"Input {name!r} (inputs[{i}]) is not an input of this model.{did_you_mean} "
                    f"Available inputs are {_names(list(specs))} ({len(specs)} in all; see GET /v2/models/<name>)."
                )
            if name in items:
                raise InvalidInput(f"Input {name!r} appears twice in 'inputs'; send each feature once.")
            items[name] = item
        if len(items) != len(specs):
            missing = [n for n in specs if n not in items]
            raise InvalidInput(
                f"Input(s) {_names(missing)} are missing ({len(missing)} of {len(specs)}). This model needs one "
                "tensor per feature; send null values for missing data."
            )
        return items

    def _shapes(
        self, items: dict[str, dict[str, Any]], binary: memoryview | bytes
    ) -> tuple[int, dict[str, Any]]:
        """Check datatype family and shape of every input; return the batch size and each input's data.

        ``items`` is in request order, which is the order binary chunks follow the header in."""
        rows = -1
        first = ""
        offset = 0
        sources: dict[str, Any] = {}
        specs = self._specs
        for name, item in items.items():
            spec = specs[name]
            datatype = item.get("datatype")
            if type(datatype) is not str or datatype not in KNOWN_DATATYPES:
                raise BadRequest(
                    f"Input {name!r} has datatype {show(datatype)}, which is not an Open Inference Protocol "
                    f"datatype; use {spec.datatype} for this input."
                )
            if spec.kind == "numeric":
                if datatype not in NUMERIC_DATATYPES:
                    raise InvalidInput(
                        f"Input {name!r} is a numeric feature: expected datatype {NUMERIC_LIST}; got {datatype}."
                    )
            elif datatype != BYTES:
                raise InvalidInput(
                    f"Input {name!r} is a categorical feature: expected datatype BYTES (strings); got {datatype}. "
                    "Send its values as strings."
                )
            shape = item.get("shape")
            if type(shape) is not list or not shape or any(type(d) is not int or d < 0 for d in shape):
                raise BadRequest(
                    f"Input {name!r} has shape {show(shape)}; expected a list of non-negative integers such as [3] or [3, 1]."
                )
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise InvalidInput(
                    f"Input {name!r} has shape {shape}; this model takes one value per row: shape [N] or [N, 1]."
                )
            if rows < 0:
                rows, first = shape[0], name
            elif shape[0] != rows:
                raise InvalidInput(
                    f"Input {name!r} has {shape[0]} rows (shape {shape}), but input {first!r} has {rows}; "
                    "every input must carry the same batch size."
                )
            parameters = item.get("parameters")
            if parameters is not None and type(parameters) is not dict:
                raise BadRequest(
                    f"Input {name!r}: 'parameters' must be a JSON object; got {show(parameters)}."
                )
            size = parameters.get("binary_data_size") if parameters else None
            if size is None:
                data = item.get("data")
                if data is None:
                    raise BadRequest(f"Input {name!r} has no 'data' (and no parameters.binary_data_size).")
                if type(data) is not list:
                    raise BadRequest(f"Input {name!r}: 'data' must be a list; got {json_type(data)}.")
                sources[name] = data
                continue
            if type(size) is not int or size < 0:
                raise BadRequest(
                    f"Input {name!r}: binary_data_size must be a non-negative integer; got {show(size)}."
                )
            if "data" in item:
                raise BadRequest(f"Input {name!r} has both 'data' and binary_data_size; send one of them.")
            if offset + size > len(binary):
                raise BadRequest(
                    f"Input {name!r} declares {size} bytes of binary data, but only {len(binary) - offset} bytes follow "
                    "the JSON header. Check Inference-Header-Content-Length and binary_data_size."
                )
            sources[name] = memoryview(binary)[offset : offset + size]
            offset += size
        if offset != len(binary):
            raise BadRequest(
                f"{len(binary) - offset} bytes of binary data follow the JSON header, but no input claims them. "
                "Check Inference-Header-Content-Length and each input's binary_data_size."
            )
        if rows == 0:
            raise InvalidInput(
                f"The batch is empty: input {first!r} (and every other) has 0 rows; send at least one row."
            )
        return rows, sources

    def _plain_rows(self, ordered: list[dict[str, Any]]) -> tuple[int, list[Any]] | None:
        """Batch size and data lists if every input is plain JSON (exactly name, datatype, shape, data) with the
        schema's datatype and one common shape; else None, and :meth:`_shapes` checks input by input.

        Only C-level calls (itemgetter, list comparisons) here: this runs for every request.
        """
        count = len(ordered)
        try:
            datatypes = list(map(_DATATYPE, ordered))
            shapes = list(map(_SHAPE, ordered))
            datas = list(map(_DATA, ordered))
        except KeyError:
            return None
        if datatypes != self._datatypes or list(map(len, ordered)).count(4) != count:
            return None
        shape = shapes[0]
        if type(shape) is not list or not (
            (len(shape) == 1 or (len(shape) == 2 and type(shape[1]) is int and shape[1] == 1))
            and type(shape[0]) is int
            and shape[0] > 0
        ):
            return None
        # orjson.dumps tells 1 from 1.0 and true, which list equality does not.
        try:
            same = orjson.dumps(shapes) == orjson.dumps([shape] * count)
        except orjson.JSONEncodeError:  # a shape nested beyond orjson's depth: the exact path names it
            return None
        if not same or list(map(type, datas)).count(list) != count:
            return None
        return shape[0], datas

    def _fast_numeric(self, datas: list[Any], rows: int) -> np.ndarray | None:
        """Every numeric input a flat list of ``rows`` plain numbers, all finite in float32: one numpy call."""
        names = self._numeric
        if not names:
            return None
        if (
            list(map(len, datas)).count(rows) != len(datas)
            or not set(map(type, chain.from_iterable(datas))) <= NUMBER_TYPES
        ):
            return None
        with np.errstate(over="ignore"):
            matrix = np.array(datas, dtype=np.float64).astype(np.float32)  # ints too big for float32 directly
        if not np.isfinite(matrix).all():
            return None
        return matrix

    def _numeric_matrix(
        self, items: dict[str, dict[str, Any]], sources: dict[str, Any], rows: int
    ) -> np.ndarray:
        """Exact path: nested lists, nulls, other datatypes, binary data, or an error to name precisely."""
        # Allocate only after every input proved it holds ``rows`` values: ``rows`` comes from the client.
        arrays: list[np.ndarray] = []
        binary: list[int] = []
        with np.errstate(over="ignore", invalid="ignore"):
            for j, name in enumerate(self._numeric):
                item = items[name]
                source = sources[name]
                if isinstance(source, memoryview):
                    values = numbers_from_binary(name, item["datatype"], source, rows)
                    binary.append(j)
                else:
                    values, flat = numbers_from_json(name, item["datatype"], item["shape"], source, rows)
                    reject_infinite(name, values, flat)
                arrays.append(values)
        matrix = np.stack(arrays)
        # Binary data is checked once for the whole matrix (one pass instead of one per input).
        if binary and np.isinf(matrix[binary]).any():
            for j in binary:
                reject_infinite(self._numeric[j], matrix[j], None)
        return matrix


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Sequence[tuple[OutputSpec, np.ndarray, bool]],
    encoded: Mapping[str, bytes] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header.

    ``encoded`` may hold an output's binary form already made (e.g. class labels from their indices).
    """
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for spec, array, binary in outputs:
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            made = encoded.get(spec.name) if encoded else None
            raw = made if made is not None else binary_tensor(spec.datatype, array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif spec.datatype == BYTES or array.dtype == object:
            tensor["data"] = array.ravel().tolist()
        else:
            tensor["data"] = np.ascontiguousarray(array).ravel()
        tensors.append(tensor)
    header = orjson.dumps(
        {"model_name": model_name, "model_version": model_version, "id": request_id, "outputs": tensors},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
