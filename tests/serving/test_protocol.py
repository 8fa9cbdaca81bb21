"""The pure V2 codec: fast and exact paths agree, binary tensors, missing values, response encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlci.model.data import _MISSING
from mlci.serving.errors import BadRequest, InvalidInput
from mlci.serving.protocol import Decoder, InferRequest, InputSpec, OutputSpec, encode_response
from mlci.serving.tensors import MISSING_TOKENS

SPECS = [
    InputSpec("a", "numeric", "FP32"),
    InputSpec("b", "numeric", "FP32"),
    InputSpec("c", "categorical", "BYTES"),
]
OUTPUTS = [OutputSpec("label", "BYTES", (-1,)), OutputSpec("probabilities", "FP32", (-1, 2))]
DECODER = Decoder(SPECS, OUTPUTS)


def body(a: list, b: list, c: list, **extra: object) -> bytes:
    rows = len(c)
    return orjson.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [rows], "data": a},
                {"name": "b", "datatype": "FP32", "shape": [rows], "data": b},
                {"name": "c", "datatype": "BYTES", "shape": [rows], "data": c},
            ],
            **extra,
        }
    )


def feeds(req: InferRequest) -> dict[str, np.ndarray]:
    """Per-feature view of the decoded request (numeric features arrive packed in one matrix)."""
    assert req.numeric is not None and req.numeric.flags.c_contiguous and req.numeric.dtype == np.float32
    return {"a": req.numeric[0:1].T, "b": req.numeric[1:2].T, "c": req.categorical["c"]}


def test_missing_tokens_match_training() -> None:
    assert MISSING_TOKENS == _MISSING


def test_decode_single_and_batch() -> None:
    req = DECODER.decode(body([1.5, 2], [3, 4.25], ["x", " y "], id="r1"))
    assert req.id == "r1" and req.rows == 2
    assert feeds(req)["a"].shape == (2, 1)
    np.testing.assert_array_equal(req.numeric, [[1.5, 2], [3, 4.25]])  # feature-major
    assert feeds(req)["c"].ravel().tolist() == ["x", "y"]
    assert req.categories == {"c": ["x", "y"]}  # what the log writes besides the numeric matrix


def test_null_is_nan_and_missing_category() -> None:
    req = DECODER.decode(body([None, 1.0], [1.0, 2.0], [None, "N/A"]))
    assert np.isnan(feeds(req)["a"][0, 0]) and feeds(req)["a"][1, 0] == 1.0
    assert feeds(req)["c"].ravel().tolist() == ["", ""]
    assert req.categories == {"c": ["", ""]}


def test_inputs_in_any_order() -> None:
    doc = orjson.loads(body([1.0], [2.0], ["x"]))
    doc["inputs"].reverse()
    req = DECODER.decode(orjson.dumps(doc))
    assert feeds(req)["b"][0, 0] == 2.0 and feeds(req)["a"][0, 0] == 1.0 and list(req.categories) == ["c"]


def test_integer_datatype_rejects_fractions() -> None:
    doc = orjson.loads(body([1.0], [2.0], ["x"]))
    doc["inputs"][0]["datatype"] = "INT64"
    assert feeds(DECODER.decode(orjson.dumps(doc)))["a"][0, 0] == 1.0
    doc["inputs"][0]["data"] = [1.5]
    with pytest.raises(InvalidInput, match=r"'a' is declared INT64, but element 0 is 1.5"):
        DECODER.decode(orjson.dumps(doc))


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(InvalidInput, match=r"'a' \(FP32\) element 1 is True \(boolean\)"):
        DECODER.decode(body([1.0, True], [1.0, 2.0], ["x", "y"]))


def binary_request(a: np.ndarray, strings: list[bytes]) -> tuple[bytes, int]:
    c = b"".join(len(s).to_bytes(4, "little") + s for s in strings)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": a.dtype.name.upper().replace("FLOAT", "FP"), "shape": [len(a), 1],
                 "parameters": {"binary_data_size": a.nbytes}},
                {"name": "b", "datatype": "FP32", "shape": [len(a)], "data": [0.0] * len(a)},
                {"name": "c", "datatype": "BYTES", "shape": [len(a)], "parameters": {"binary_data_size": len(c)}},
            ]
        }
    )  # fmt: skip
    return header + a.tobytes() + c, len(header)


def test_binary_tensors() -> None:
    raw, length = binary_request(np.array([1.0, np.nan], dtype="<f8"), [b"red", b""])
    req = DECODER.decode(raw, length)
    assert np.isnan(feeds(req)["a"][1, 0])
    assert feeds(req)["c"].ravel().tolist() == ["red", ""]


@pytest.mark.parametrize(
    ("values", "strings", "length_delta", "error", "needle"),
    [
        (np.array([np.inf], "<f4"), [b"x"], 0, InvalidInput, "'a' element 0 is inf"),
        (np.array([1.0], "<f4"), [b"\xc3\x28"], 0, InvalidInput, "'c' element 0 is not valid UTF-8"),
        (np.array([1.0], "<f4"), [b"x"], 1, BadRequest, "no input claims them"),
        (np.array([1.0], "<f4"), [b"x"], 10_000, BadRequest, "Inference-Header-Content-Length is"),
    ],
)
def test_binary_errors(
    values: np.ndarray, strings: list[bytes], length_delta: int, error: type, needle: str
) -> None:
    raw, length = binary_request(values, strings)
    raw = raw + b"\0" * (length_delta if length_delta == 1 else 0)
    with pytest.raises(error, match=needle):
        DECODER.decode(raw, length + (length_delta if length_delta > 1 else 0))


def test_truncated_binary_strings_are_400() -> None:
    raw, length = binary_request(np.array([1.0], "<f4"), [b"abc"])
    doc = orjson.loads(raw[:length])
    doc["inputs"][2]["parameters"]["binary_data_size"] = 5
    header = orjson.dumps(doc)
    with pytest.raises(BadRequest, match="declares 3 bytes"):
        DECODER.decode(header + raw[length:-2], len(header))


def test_encode_json_and_binary() -> None:
    labels = np.array(["no", "yes"], dtype=object)
    probs = np.array([[0.75, 0.25], [0.5, 0.5]], dtype=np.float32)
    content, length = encode_response(
        model_name="m",
        model_version="v",
        request_id="i",
        outputs=[(OUTPUTS[0], labels, False), (OUTPUTS[1], probs, False)],
    )
    assert length is None
    assert orjson.loads(content)["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["no", "yes"]},
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.75, 0.25, 0.5, 0.5]},
    ]
    content, length = encode_response(
        model_name="m",
        model_version="v",
        request_id="i",
        outputs=[(OUTPUTS[0], labels, True), (OUTPUTS[1], probs, True)],
    )
    assert length is not None
    header = orjson.loads(content[:length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [13, 16]
    tail = content[length:]
    assert tail[:13] == b"\x02\0\0\0no\x03\0\0\0yes"
    np.testing.assert_array_equal(np.frombuffer(tail[13:], "<f4").reshape(2, 2), probs)
