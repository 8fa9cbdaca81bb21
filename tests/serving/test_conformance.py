"""The Open Inference Protocol to the letter: one test per requirement, each citing the passage it checks.

Sources (read from the public specification repositories):

- OIP: kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``;
- BIN: Triton's ``docs/protocol/extension_binary_data.md`` (triton-inference-server/server), the binary
  tensor extension ``tritonclient.http`` uses by default.

Every request goes to a real server on 127.0.0.1 (the session servers of ``conftest.py``), through raw
HTTP or through ``tritonclient.http``; predictions are compared with onnxruntime in-process.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.model.onnxio import open_session
from mlci.serving.predlog import BlobReader, read_lines, unpack_array
from mlci.serving.protocol import Decoder, InputSpec, OutputSpec

BC = "/v2/models/breast-cancer/infer"
MIXED = "/v2/models/mixed/infer"


def reference(artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return open_session(artifact / "model.onnx").run(None, feeds)


def binary_request(
    tensors: list[tuple[str, str, np.ndarray, bool]], **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A request whose tensors (name, datatype, [N] values, as_binary) appear in the given order, binary
    chunks following the JSON header in that same order (BIN: "in the same order as ... specified in the JSON")."""
    inputs, chunks = [], []
    for name, datatype, values, as_binary in tensors:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if not as_binary:
            tensor["data"] = [None if isinstance(v, float) and np.isnan(v) else v for v in values.tolist()]
        elif datatype == "BYTES":
            raw = b"".join(len(b := str(v).encode()).to_bytes(4, "little") + b for v in values.tolist())
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            raw = np.ascontiguousarray(values, dtype={"FP32": "<f4", "FP64": "<f8"}[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        inputs.append(tensor)
    header = orjson.dumps({"inputs": inputs, **extra})
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def mixed_rows() -> dict[str, np.ndarray]:
    return {
        "age": np.array([25.0, 61.0, np.nan, 44.0], dtype=np.float32),
        "income": np.array([40.0, 150.0, 90.0, 180.5], dtype=np.float32),
        "color": np.array(["red", "blue", "", "green"], dtype=object),
    }


# -- BIN: binary data follows the JSON in the order the tensors appear there -------------------------------


def test_tritonclient_binary_inputs_in_sorted_name_order(
    bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]]
) -> None:
    """BIN: "the JSON inference request ... followed by the binary tensor data in the same order as the order
    of the input or output tensors are specified in the JSON". tritonclient sends the inputs in the order
    the caller lists them: here sorted by name, not the model's schema order."""
    host = bc_server.url.removeprefix("http://")
    names = sorted(bc_rows[0])
    assert names != list(bc_rows[0])
    feeds = {n: np.array([[r[n]] for r in bc_rows], dtype=np.float32) for n in bc_rows[0]}
    want_labels, want_probs = reference(bc_artifact, feeds)
    with triton.InferenceServerClient(host) as tc:
        for binary in (True, False):
            inputs = []
            for name in names:
                tensor = triton.InferInput(name, [len(bc_rows), 1], "FP32")
                tensor.set_data_from_numpy(feeds[name], binary_data=binary)
                inputs.append(tensor)
            result = tc.infer("breast-cancer", inputs)
            assert [v.decode() for v in result.as_numpy("label")] == want_labels.tolist(), binary
            np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, rtol=1e-6)


def test_every_order_and_encoding_gives_the_same_answer_and_log(
    mixed_server: Any, mixed_artifact: Path
) -> None:
    """BIN (order) on a mixed model: every permutation of [age, income, color], each input JSON or binary
    (and FP64 binary for a numeric one), answers and logs exactly what the schema-order JSON request does."""
    rows = mixed_rows()
    want_labels, want_probs = reference(mixed_artifact, {k: v.reshape(-1, 1) for k, v in rows.items()})
    datatypes = {"age": "FP32", "income": "FP64", "color": "BYTES"}
    logged: dict[str, Any] = {}
    with httpx.Client(base_url=mixed_server.url, timeout=30) as client:
        for order in itertools.permutations(rows):
            for mask in itertools.product((False, True), repeat=3):
                request_id = f"perm-{'-'.join(order)}-{''.join('b' if m else 'j' for m in mask)}"
                tensors = [(n, datatypes[n], rows[n], m) for n, m in zip(order, mask, strict=True)]
                content, headers = binary_request(tensors, id=request_id)
                response = client.post(MIXED, content=content, headers=headers)
                assert response.status_code == 200, (request_id, response.text)
                outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
                assert outputs["label"] == want_labels.tolist(), request_id
                np.testing.assert_allclose(
                    np.reshape(outputs["probabilities"], want_probs.shape), want_probs, rtol=1e-6
                )
                logged[request_id] = None
    mixed_server.state.log.flush()
    records = {r["id"]: r for r in read_lines(mixed_server.log_dir) if r["id"] in logged}
    assert len(records) == len(logged) == 48
    with BlobReader(mixed_server.log_dir) as blobs:
        first = next(iter(records.values()))
        want_matrix = unpack_array(first["numeric"], blobs)
        np.testing.assert_array_equal(want_matrix[0], rows["age"])  # schema order: age, income
        np.testing.assert_array_equal(want_matrix[1], rows["income"])
        for request_id, record in records.items():
            np.testing.assert_array_equal(
                unpack_array(record["numeric"], blobs), want_matrix, err_msg=request_id
            )
            assert record["inputs"] == {"color": ["red", "blue", "", "green"]}, request_id


SPECS = [
    InputSpec("a", "numeric", "FP32"),
    InputSpec("b", "numeric", "FP32"),
    InputSpec("c", "categorical", "BYTES"),
    InputSpec("d", "numeric", "FP32"),
]
DECODER = Decoder(SPECS, [OutputSpec("label", "BYTES", (-1,))])
_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    rows=st.integers(1, 5).flatmap(
        lambda n: st.tuples(
            st.lists(_finite, min_size=n, max_size=n),
            st.lists(_finite, min_size=n, max_size=n),
            st.lists(st.sampled_from(["x", "yy", "", "zé"]), min_size=n, max_size=n),
            st.lists(_finite, min_size=n, max_size=n),
        )
    ),
    order=st.permutations(range(4)),
    mask=st.lists(st.booleans(), min_size=4, max_size=4),
    wide=st.booleans(),
)
def test_decoding_is_invariant_to_input_order_and_encoding(
    rows: tuple[list[float], ...], order: list[int], mask: list[bool], wide: bool
) -> None:
    """BIN (order), as a property of the decoder: any permutation, any mix of JSON and binary tensors, gives
    the request (numeric matrix, categories) that the schema-order JSON request gives."""
    names = [s.name for s in SPECS]
    values = {
        n: np.array(v, dtype=object if n == "c" else np.float32) for n, v in zip(names, rows, strict=True)
    }
    datatype = {"a": "FP64" if wide else "FP32", "b": "FP32", "c": "BYTES", "d": "FP32"}
    plain, _ = binary_request([(n, datatype[n], values[n], False) for n in names])
    want = DECODER.decode(plain)
    content, headers = binary_request(
        [(names[i], datatype[names[i]], values[names[i]], mask[i]) for i in order]
    )
    header = headers.get("Inference-Header-Content-Length")
    got = DECODER.decode(content, None if header is None else int(header))
    np.testing.assert_array_equal(got.numeric, want.numeric)
    assert got.categories == want.categories


# -- BIN: binary_data_output and per-output binary_data -----------------------------------------------------


def _split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = response.headers.get("Inference-Header-Content-Length")
    if length is None:
        return response.json(), b""
    return orjson.loads(response.content[: int(length)]), response.content[int(length) :]


@pytest.mark.parametrize(
    ("outputs", "binary"),
    [
        (None, {"label": True, "probabilities": True}),
        ([{"name": "label"}, {"name": "probabilities"}], {"label": True, "probabilities": True}),
        ([{"name": "probabilities"}], {"probabilities": True}),
        (
            [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
            {"label": False, "probabilities": True},
        ),
    ],
)
def test_binary_data_output_applies_to_listed_outputs(
    client: httpx.Client,
    bc_rows: list[dict[str, float]],
    make_body: Any,
    outputs: Any,
    binary: dict[str, bool],
) -> None:
    """BIN: "binary_data_output: ... true if all outputs should be returned as binary data ... If binary_data
    is specified on an output it overrides this setting"."""
    body = make_body(bc_rows[:3], parameters={"binary_data_output": True})
    if outputs is not None:
        body["outputs"] = outputs
    header, _ = _split(client.post(BC, json=body))
    got = {o["name"]: "parameters" in o and "binary_data_size" in o["parameters"] for o in header["outputs"]}
    assert got == binary
    for output in header["outputs"]:
        assert ("data" in output) is not binary[output["name"]]


# -- OIP: the id --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["", "42", " ", "é-✓"])
def test_id_is_echoed_exactly(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any, request_id: str
) -> None:
    """OIP, inference request: "id: An identifier for this request. Optional, but if specified this identifier
    must be returned in the response." An empty string is specified too."""
    assert client.post(BC, json=make_body(bc_rows[:1], id=request_id)).json()["id"] == request_id
    fast = make_body(bc_rows[:2], id=request_id)
    content, headers = binary_request(
        [(i["name"], "FP32", np.array(i["data"], dtype=np.float32), True) for i in fast["inputs"]],
        id=request_id,
    )
    assert _split(client.post(BC, content=content, headers=headers))[0]["id"] == request_id


def test_no_id_gets_a_generated_one(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    """OIP, inference response: "id: The "id" identifier given in the request, if any." Without one the
    server makes one up, so the prediction log can still name the request."""
    a = client.post(BC, json=make_body(bc_rows[:1])).json()["id"]
    b = client.post(BC, json=make_body(bc_rows[:1])).json()["id"]
    assert a and b and a != b


# -- OIP: model metadata ------------------------------------------------------------------------------------


def test_platform_is_an_oip_platform_name(client: httpx.Client) -> None:
    """OIP, Platforms: "The following platform names are allowed: ... onnx_onnxv1 : A ONNX model encoded for
    ONNX Runtime." (Triton says ``onnxruntime_onnx``; we follow the specification.)"""
    assert client.get("/v2/models/breast-cancer").json()["platform"] == "onnx_onnxv1"


def test_probabilities_are_fp32_for_every_estimator(client: httpx.Client, mixed_server: Any) -> None:
    """One datatype for the probabilities whatever the estimator, so a client that hard-codes it keeps working
    when production moves from LogisticRegression (double in ONNX) to a forest (float): FP32, said in the
    metadata and the responses."""
    metas = [
        client.get("/v2/models/breast-cancer").json(),
        httpx.get(f"{mixed_server.url}/v2/models/mixed").json(),
    ]
    for meta in metas:
        outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
        assert outputs == {"label": "BYTES", "probabilities": "FP32"}, meta["name"]


# -- errors: one status for "names a tensor this model does not have" ---------------------------------------


def test_unknown_input_and_unknown_output_get_the_same_status(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    """OIP: "A failed inference request must be indicated by an HTTP error status (typically 400)"; this server
    keeps 400 for a body that is not a V2 request and 422 for a V2 request that does not fit the model
    (unknown or missing tensor, shape, datatype, value): an unknown output is the latter, like an unknown input."""
    body = make_body(bc_rows[:1])
    body["inputs"][0]["name"] = "mean_radiuss"
    unknown_input = client.post(BC, json=body)
    body = make_body(bc_rows[:1], outputs=[{"name": "labels"}])
    unknown_output = client.post(BC, json=body)
    assert unknown_input.status_code == unknown_output.status_code == 422
    assert "'label'" in unknown_output.json()["error"]  # the available outputs are named


# -- JSON NaN / Infinity literals ---------------------------------------------------------------------------


def test_nan_literal_is_a_missing_value_like_null(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    """Python's ``json.dumps`` (and tritonclient in JSON mode) writes ``NaN`` for a missing float. It is read
    as a missing value, exactly like ``null``."""
    with_null = make_body(bc_rows[:2])
    with_null["inputs"][3]["data"][1] = None
    with_nan = make_body(bc_rows[:2])
    with_nan["inputs"][3]["data"][1] = float("nan")
    content = json.dumps(with_nan).encode()
    assert b"NaN" in content
    a = client.post(BC, json=with_null)
    b = client.post(BC, content=content, headers={"Content-Type": "application/json"})
    assert a.status_code == b.status_code == 200, b.text
    assert a.json()["outputs"] == b.json()["outputs"]


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity"])
def test_infinity_literal_is_422_naming_the_input(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any, literal: str
) -> None:
    body = make_body(bc_rows[:1])
    body["inputs"][2]["data"][0] = float(literal.lower().replace("infinity", "inf"))
    response = client.post(BC, content=json.dumps(body).encode())
    assert response.status_code == 422
    assert repr(body["inputs"][2]["name"]) in response.json()["error"]


def test_tritonclient_json_mode_with_nan(
    bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]]
) -> None:
    """tritonclient with ``binary_data=False`` writes NaN as the literal ``NaN``: it must work as missing."""
    host = bc_server.url.removeprefix("http://")
    feeds = {n: np.array([[r[n]] for r in bc_rows[:4]], dtype=np.float32) for n in bc_rows[0]}
    feeds["mean_texture"][1, 0] = np.nan
    want_labels, _ = reference(bc_artifact, feeds)
    with triton.InferenceServerClient(host) as tc:
        inputs = []
        for name, values in feeds.items():
            tensor = triton.InferInput(name, [4, 1], "FP32")
            tensor.set_data_from_numpy(values, binary_data=False)
            inputs.append(tensor)
        result = tc.infer("breast-cancer", inputs)
    assert [v.decode() for v in result.as_numpy("label")] == want_labels.tolist()


# -- Content-Encoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(
    bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]], algorithm: str
) -> None:
    """tritonclient's ``request_compression_algorithm`` sends ``Content-Encoding: gzip`` or ``deflate``."""
    host = bc_server.url.removeprefix("http://")
    feeds = {n: np.array([[r[n]] for r in bc_rows], dtype=np.float32) for n in bc_rows[0]}
    want_labels, _ = reference(bc_artifact, feeds)
    with triton.InferenceServerClient(host) as tc:
        inputs = []
        for name, values in feeds.items():
            tensor = triton.InferInput(name, [len(bc_rows), 1], "FP32")
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        result = tc.infer("breast-cancer", inputs, request_compression_algorithm=algorithm)
    assert [v.decode() for v in result.as_numpy("label")] == want_labels.tolist()


def test_unknown_content_encoding_is_415(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    response = client.post(
        BC, content=orjson.dumps(make_body(bc_rows[:1])), headers={"Content-Encoding": "br"}
    )
    assert response.status_code == 415
    assert "gzip" in response.json()["error"] and "br" in response.json()["error"]


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress])
def test_corrupt_or_oversized_compressed_body(client: httpx.Client, compress: Any) -> None:
    """A compressed body that does not decompress is 400; one that inflates beyond the body limit is 413
    (the limit holds for the decompressed bytes, so a small bomb cannot take the server's memory)."""
    encoding = "gzip" if compress is gzip.compress else "deflate"
    broken = client.post(BC, content=b"\x1f\x8b not really", headers={"Content-Encoding": encoding})
    assert broken.status_code == 400 and encoding in broken.json()["error"]
    bomb = compress(b" " * 50_000_000)  # 50 MB of spaces: ~50-100 KiB compressed; the limit here is 2 MB
    assert len(bomb) < 200_000
    response = client.post(BC, content=bomb, headers={"Content-Encoding": encoding})
    assert response.status_code == 413, response.text
    assert client.get("/v2/health/ready").status_code == 200
