"""The msgspec fast paths agree with the general decoder on everything they accept, and only take what they should.

A decoder with its fast paths switched off is the reference: for every generated body (valid or not) both
must give the same request, or the same error.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.serving.errors import ServingError
from mlci.serving.protocol import Decoder, InferRequest, InputSpec, OutputSpec

SPECS = [InputSpec("a", "numeric", "FP32"), InputSpec("b", "numeric", "FP32")]
OUTPUTS = [OutputSpec("label", "BYTES", (-1,)), OutputSpec("probabilities", "FP32", (-1, 2))]
FAST = Decoder(SPECS, OUTPUTS)
GENERAL = Decoder(SPECS, OUTPUTS)
GENERAL._fast = False  # the reference: the general path only


def outcome(decoder: Decoder, body: bytes, header_length: int | None) -> tuple[Any, ...]:
    try:
        req: InferRequest = decoder.decode(body, header_length)
    except ServingError as exc:
        return ("error", type(exc).__name__, str(exc))
    numeric = (
        None if req.numeric is None else (req.numeric.dtype.str, req.numeric.shape, req.numeric.tobytes())
    )
    return ("ok", req.id, req.rows, numeric, req.categories, req.outputs, req.binary_output)


def test_the_fast_paths_are_taken() -> None:
    """Guard for the tests below: the bodies well-behaved clients send do take the fast paths."""
    plain = orjson.dumps(
        {"inputs": [{"name": n, "datatype": "FP32", "shape": [2], "data": [1, 2.5]} for n in ("a", "b")]}
    )
    assert FAST._fast_plain(plain) is not None and GENERAL._fast is False
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [2, 1], "parameters": {"binary_data_size": 8}}
                for n in ("a", "b")
            ]
        }
    )
    assert FAST._fast_binary(header, struct.pack("<4f", 1, 2, 3, 4)) is not None
    req = FAST.decode(header + struct.pack("<4f", 1, 2, 3, 4), len(header))
    # feature-major, as the columns arrive one after the other: the body itself, not a copy
    np.testing.assert_array_equal(req.numeric, [[1, 2], [3, 4]])
    assert req.numeric.flags.c_contiguous and not req.numeric.flags.owndata


NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1e39, -1e39, 3.4028235e38, 1e-46, 0.0, -0.0]),  # beyond float32, its edge, subnormal
)
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.just([1.0]), st.just({}))


@st.composite
def tensor(draw: st.DrawFn, name: str, rows: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": draw(st.sampled_from([name, name, name, "zz"])),
        "datatype": draw(st.sampled_from(["FP32", "FP32", "FP32", "FP64", "INT64", "BYTES", "fp32"])),
        "shape": draw(
            st.sampled_from([[rows], [rows], [rows, 1], [rows, 2], [rows + 1], [], [True], [float(rows)]])
        ),
    }
    data = draw(st.lists(NUMBERS, min_size=rows, max_size=rows))
    if draw(st.integers(0, 5)) == 0 and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(ODD)
    if draw(st.integers(0, 7)) == 0:
        data = [[v] for v in data]
    item["data"] = data
    if draw(st.integers(0, 9)) == 0:
        item["parameters"] = draw(st.sampled_from([{}, {"content_type": "np"}, None]))
    if draw(st.integers(0, 9)) == 0:
        del item[draw(st.sampled_from(["name", "datatype", "shape", "data"]))]
    return item


@st.composite
def plain_body(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 4))
    inputs = [draw(tensor("a", rows)), draw(tensor("b", rows))]
    if draw(st.booleans()):
        inputs.reverse()
    doc: dict[str, Any] = {
        "inputs": draw(st.sampled_from([inputs, inputs, inputs[:1], [*inputs, inputs[0]]]))
    }
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=4), st.integers(), st.none()))
    if draw(st.integers(0, 3)) == 0:
        doc["parameters"] = draw(
            st.sampled_from([{"binary_data_output": True}, {"binary_data_output": 1}, [], {}])
        )
    if draw(st.integers(0, 3)) == 0:
        doc["outputs"] = draw(
            st.sampled_from(
                [[{"name": "label"}], [{"name": "nope"}], [{"name": "label"}, {"name": "label"}], {}]
            )
        )
    if draw(st.integers(0, 9)) == 0:
        doc["extra"] = 1
    return json.dumps(doc).encode()  # stdlib: writes integers beyond 64 bits, as clients may


def test_a_top_level_model_name_keeps_the_fast_paths() -> None:
    """kserve's InferenceRESTClient (and Triton's own examples) put ``"model_name"`` in every request body."""
    plain = orjson.dumps(
        {
            "model_name": "m",
            "inputs": [{"name": n, "datatype": "FP32", "shape": [2], "data": [1, 2.5]} for n in ("a", "b")],
        }
    )
    assert FAST._fast_plain(plain) is not None
    header = orjson.dumps(
        {
            "model_name": "m",
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
                for n in ("a", "b")
            ],
        }
    )
    assert FAST._fast_binary(header, struct.pack("<4f", 1, 2, 3, 4)) is not None
    assert outcome(FAST, plain, None) == outcome(GENERAL, plain, None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_body())
def test_plain_json_fast_path_agrees_with_the_general_path(body: bytes) -> None:
    assert outcome(FAST, body, None) == outcome(GENERAL, body, None)


@st.composite
def binary_body(draw: st.DrawFn) -> tuple[bytes, int]:
    rows = draw(st.integers(0, 4))
    inputs, chunks = [], []
    for name in ("a", "b"):
        datatype = draw(st.sampled_from(["FP32", "FP32", "FP32", "FP64", "INT32"]))
        code = {"FP32": "f", "FP64": "d", "INT32": "i"}[datatype]
        values = draw(
            st.lists(
                st.floats(width=32) if code != "i" else st.integers(-(2**31), 2**31 - 1),
                min_size=rows,
                max_size=rows,
            )
        )
        raw = struct.pack(f"<{rows}{code}", *values)
        if draw(st.integers(0, 7)) == 0:
            raw = raw[:-1] if raw else b"\x00"
        size = len(raw) if draw(st.integers(0, 7)) else len(raw) + 4
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": draw(st.sampled_from([[rows], [rows, 1], [rows, 1], [rows + 1]])),
                "parameters": {"binary_data_size": size},
            }
        )
        chunks.append(raw)
    if draw(st.booleans()):
        inputs.reverse()
        chunks.reverse()
    header = orjson.dumps({"inputs": inputs, **({"id": "x"} if draw(st.booleans()) else {})})
    data = b"".join(chunks)
    tail = draw(st.sampled_from(["", "", "", "", "extra", "short"]))  # sizes right, body not
    data = data + b"\x00\x00\x80\x3f" if tail == "extra" else data[:-1] if tail == "short" else data
    return header + data, len(header)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binary_body())
def test_binary_fast_path_agrees_with_the_general_path(case: tuple[bytes, int]) -> None:
    body, header_length = case
    assert outcome(FAST, body, header_length) == outcome(GENERAL, body, header_length)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1e39]},'
        b' {"name": "b", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": ["\xff"]},'
        b' {"name": "b", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    ],
)
def test_fast_path_declines_what_the_general_path_must_name(body: bytes) -> None:
    assert FAST._fast_plain(body) is None
    assert outcome(FAST, body, None)[0] == "error"
