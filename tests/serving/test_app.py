"""Routes over real uvicorn on 127.0.0.1: V2 endpoints, a real V2 client, every bad input, fuzzing, readiness."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.model.artifact import read_manifest
from mlci.model.onnxio import open_session
from mlci.serving.predlog import BlobReader, read_lines, unpack_array
from mlci.serving.runtime import ModelRuntime
from mlci.serving.settings import Settings

INFER = "/v2/models/breast-cancer/infer"


def reference(artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What onnxruntime answers in-process for the same feeds."""
    return open_session(artifact / "model.onnx").run(None, feeds)


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_model_metadata_from_schema(
    client: httpx.Client, bc_artifact: Path, bc_rows: list[dict[str, float]]
) -> None:
    manifest = read_manifest(bc_artifact)
    meta = client.get("/v2/models/breast-cancer").json()
    assert meta["name"] == "breast-cancer"
    assert meta["versions"] == [manifest["digest"]]
    assert [i["name"] for i in meta["inputs"]] == list(bc_rows[0])
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32"}
    assert open_session(bc_artifact / "model.onnx").get_outputs()[1].type == "tensor(double)"
    assert meta["outputs"] == [  # FP32 all the same: one probability datatype for every model
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert client.get("/v2/models/breast-cancer/ready").json() == {"name": "breast-cancer", "ready": True}


def test_infer_batch_matches_in_process(
    client: httpx.Client, bc_artifact: Path, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    response = client.post(INFER, json=make_body(bc_rows, id="req-1"))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "req-1"
    assert doc["model_version"] == read_manifest(bc_artifact)["digest"]
    labels, probabilities = doc["outputs"]
    feeds = {n: np.array([[r[n]] for r in bc_rows], dtype=np.float32) for n in bc_rows[0]}
    want_labels, want_probs = reference(bc_artifact, feeds)
    assert labels["shape"] == [64] and labels["data"] == want_labels.tolist()
    assert probabilities["shape"] == [64, 2]
    np.testing.assert_allclose(np.array(probabilities["data"]).reshape(64, 2), want_probs, rtol=1e-6)


@pytest.mark.parametrize("version_form", ["digest", "hex"])
def test_versions_forms(
    client: httpx.Client,
    bc_artifact: Path,
    bc_rows: list[dict[str, float]],
    make_body: Any,
    version_form: str,
) -> None:
    digest = read_manifest(bc_artifact)["digest"]
    version = digest if version_form == "digest" else digest.removeprefix("sha256:")
    base = f"/v2/models/breast-cancer/versions/{version}"
    assert client.get(base).json()["versions"] == [digest]
    assert client.get(f"{base}/ready").status_code == 200
    assert client.post(f"{base}/infer", json=make_body(bc_rows[:1])).status_code == 200


def test_unknown_version_is_404(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    response = client.post("/v2/models/breast-cancer/versions/sha256:beef/infer", json=make_body(bc_rows[:1]))
    assert response.status_code == 404
    assert "sha256:beef" in response.json()["error"]


def test_input_forms_agree(client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any) -> None:
    """[N] flat, [N, 1] flat, [N, 1] nested and FP64/INT64/INT32 datatypes all give the same answer."""
    rows = [{k: float(round(v)) for k, v in r.items()} for r in bc_rows[:3]]
    base = make_body(rows)
    variants = [base]
    shaped = copy.deepcopy(base)
    for tensor in shaped["inputs"]:
        tensor["shape"] = [3, 1]
    variants.append(shaped)
    nested = copy.deepcopy(shaped)
    for tensor in nested["inputs"]:
        tensor["data"] = [[v] for v in tensor["data"]]
    variants.append(nested)
    for datatype in ("FP64", "INT64", "INT32"):
        typed = copy.deepcopy(base)
        for tensor in typed["inputs"]:
            tensor["datatype"] = datatype
            tensor["data"] = [int(v) if datatype.startswith("INT") else v for v in tensor["data"]]
        variants.append(typed)
    answers = [client.post(INFER, json=v).json()["outputs"] for v in variants]
    assert all(a == answers[0] for a in answers), answers


def test_output_selection_and_binary_output(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    only = client.post(INFER, json=make_body(bc_rows[:2], outputs=[{"name": "probabilities"}])).json()
    assert [o["name"] for o in only["outputs"]] == ["probabilities"]
    binary = client.post(
        INFER,
        json=make_body(bc_rows[:2], outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]),
    )
    length = int(binary.headers["inference-header-content-length"])
    header = orjson.loads(binary.content[:length])
    tensor = header["outputs"][0]
    assert tensor["datatype"] == "FP32"
    assert tensor["parameters"] == {"binary_data_size": 2 * 2 * 4}
    np.testing.assert_array_equal(
        np.frombuffer(binary.content[length:], "<f4"), np.float32(only["outputs"][0]["data"])
    )
    bad = client.post(INFER, json=make_body(bc_rows[:1], outputs=[{"name": "proba"}]))
    assert bad.status_code == 422 and "'probabilities'" in bad.json()["error"]


def test_null_is_a_missing_value_imputed_by_the_model(
    client: httpx.Client, bc_artifact: Path, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    body = make_body(bc_rows[:1])
    body["inputs"][0]["data"] = [None]
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    feeds = {n: np.array([[v]], dtype=np.float32) for n, v in bc_rows[0].items()}
    feeds["mean_radius"][0, 0] = np.nan
    np.testing.assert_allclose(
        response.json()["outputs"][1]["data"], reference(bc_artifact, feeds)[1].ravel(), rtol=1e-6
    )


def _bad(body: dict[str, Any], edit: str) -> dict[str, Any]:
    """Apply one named mistake to a valid single-row body."""
    body = copy.deepcopy(body)
    first = body["inputs"][0]
    if edit == "missing":
        body["inputs"] = body["inputs"][1:]
    elif edit == "unknown":
        body["inputs"].append({"name": "mean_radiuss", "datatype": "FP32", "shape": [1], "data": [1.0]})
        body["inputs"] = body["inputs"][1:]
    elif edit == "datatype":
        first.update(datatype="BYTES", data=["1.0"])
    elif edit == "not-a-datatype":
        first["datatype"] = "FLOAT"
    elif edit == "shape":
        first.update(shape=[1, 2], data=[1.0, 2.0])
    elif edit == "length":
        first["data"] = [1.0, 2.0]
    elif edit == "rows":
        first.update(shape=[2], data=[1.0, 2.0])
    elif edit == "string-in-fp32":
        first["data"] = ["1.0"]
    elif edit == "overflow":
        first["data"] = [1e39]
    elif edit == "huge-rows":  # rows come from the client: nothing may be allocated from them before checking
        for tensor in body["inputs"]:
            tensor["shape"] = [10**12]
    elif edit == "empty":
        for tensor in body["inputs"]:
            tensor.update(shape=[0], data=[])
    elif edit == "no-inputs":
        del body["inputs"]
    return body


@pytest.mark.parametrize(
    ("edit", "status", "needle"),
    [
        ("missing", 422, "'mean_radius'"),
        ("unknown", 422, "Did you mean 'mean_radius'?"),
        ("datatype", 422, "'mean_radius' is a numeric feature"),
        ("not-a-datatype", 400, "'FLOAT'"),
        ("shape", 422, "[1, 2]"),
        ("length", 422, "'mean_radius' has shape [1] (1 values), but its data holds 2"),
        ("rows", 422, "'mean_texture' has 1 rows"),
        ("string-in-fp32", 422, "'mean_radius' (FP32) element 0 is '1.0'"),
        ("overflow", 422, "'mean_radius' element 0 is 1e+39"),
        ("huge-rows", 422, "has shape [1000000000000] (1000000000000 values), but its data holds 1"),
        ("empty", 422, "The batch is empty"),
        ("no-inputs", 400, "no 'inputs'"),
    ],
)
def test_bad_input_names_the_field(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any, edit: str, status: int, needle: str
) -> None:
    response = client.post(INFER, content=orjson.dumps(_bad(make_body(bc_rows[:1]), edit)))
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"inputs": [', "not valid JSON"),
        (
            b'{"inputs": [{"name": "mean_radius", "datatype": "FP32", "shape": [1], "data": [NaNa]}]}',
            "not valid JSON",
        ),
        (b'{"inputs": [{"name": "\xff\xfe"}]}', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, body: bytes, needle: str) -> None:
    response = client.post(INFER, content=body)
    assert response.status_code == 400
    assert needle in response.json()["error"]


def test_body_over_limit_is_413(client: httpx.Client) -> None:
    response = client.post(INFER, content=b" " * 2_000_001)
    assert response.status_code == 413
    assert "2000000" in response.json()["error"]


def test_body_over_limit_without_content_length_is_413(client: httpx.Client) -> None:
    response = client.post(INFER, content=iter([b" " * 1_000_000] * 3))  # chunked: no Content-Length
    assert response.status_code == 413


def test_unknown_model_and_route_are_404(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    response = client.post("/v2/models/iris/infer", json=make_body(bc_rows[:1]))
    assert response.status_code == 404 and "'iris'" in response.json()["error"]
    assert client.get("/v2/models/iris").status_code == 404
    assert client.get("/nope").json()["error"].startswith("GET /nope")


def test_bytes_input_must_be_utf8_binary(mixed_server: Any) -> None:
    """Non-UTF-8 bytes can only arrive through the binary extension (JSON strings are always text)."""
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "age", "datatype": "FP32", "shape": [1], "data": [30.0]},
                {"name": "income", "datatype": "FP32", "shape": [1], "data": [50.0]},
                {"name": "color", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
            ]
        }
    )
    body = header + (2).to_bytes(4, "little") + b"\xff\xfe"
    response = httpx.post(
        f"{mixed_server.url}/v2/models/mixed/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 422
    assert "'color' element 0 is not valid UTF-8" in response.json()["error"]


def test_metrics_count_requests_batches_and_classes(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = client.get("/metrics").text
    client.post(INFER, json=make_body(bc_rows[:5]))
    client.post("/v2/models/breast-cancer/infer", content=b"{")
    after = client.get("/metrics").text
    ok = 'mlci_requests_total{digest="sha256:'
    assert value(after, ok) - value(before, ok) >= 2
    assert 'status="400"' in after
    assert value(after, "mlci_predictions_total{") - value(before, "mlci_predictions_total{") == 5
    assert value(after, "mlci_batch_rows_count{") - value(before, "mlci_batch_rows_count{") == 1
    assert 'class="benign"' in after or 'class="malignant"' in after


def test_prediction_log_records_each_request(
    bc_server: Any, client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    response = client.post(INFER, json=make_body(bc_rows[:2], id="logged-42")).json()
    bc_server.state.log.flush()
    [line] = [r for r in read_lines(bc_server.log_dir) if r["id"] == "logged-42"]
    assert line["digest"] == response["model_version"]
    assert line["rows"] == 2
    matrix = unpack_array(line["numeric"])  # the float32 matrix the model saw: one row per feature
    assert matrix.dtype == np.float32 and matrix.shape == (30, 2)
    names = list(bc_rows[0])
    want = np.array([[row[n] for row in bc_rows[:2]] for n in names], dtype=np.float32)
    np.testing.assert_array_equal(matrix, want)
    assert line["inputs"] == {}
    assert line["outputs"]["label"] == response["outputs"][0]["data"]  # two rows: plain JSON
    np.testing.assert_allclose(np.ravel(line["outputs"]["probabilities"]), response["outputs"][1]["data"])
    batch = client.post(INFER, json=make_body(bc_rows[:64], id="logged-batch")).json()
    bc_server.state.log.flush()
    [line] = [r for r in read_lines(bc_server.log_dir) if r["id"] == "logged-batch"]
    assert line["outputs"]["label"]["classes"] == ["benign", "malignant"]  # packed: indices + class names
    assert unpack_array(line["outputs"]["label"]).tolist() == batch["outputs"][0]["data"]
    probabilities = unpack_array(line["outputs"]["probabilities"])
    assert probabilities.dtype == np.float32  # probabilities are logged as float32: error below 6e-8
    np.testing.assert_allclose(probabilities.ravel(), batch["outputs"][1]["data"], rtol=0, atol=6e-8)
    assert "blob" in line["numeric"]  # 7.5 KiB of inputs: in the segment's blob file, raw
    with BlobReader(bc_server.log_dir) as blobs:
        np.testing.assert_array_equal(
            unpack_array(line["numeric"], blobs),
            np.array([[row[n] for row in bc_rows[:64]] for n in names], dtype=np.float32),
        )


def test_tritonclient_single_batch_and_metadata(
    bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]]
) -> None:
    """A third-party V2 client, with its defaults (binary tensors in and out)."""
    host = bc_server.url.removeprefix("http://")
    with triton.InferenceServerClient(host) as tc:
        assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready("breast-cancer")
        assert len(tc.get_model_metadata("breast-cancer")["inputs"]) == 30
        for rows in (bc_rows[:1], bc_rows):
            inputs = []
            for name in rows[0]:
                tensor = triton.InferInput(name, [len(rows), 1], "FP32")
                tensor.set_data_from_numpy(np.array([[r[name]] for r in rows], dtype=np.float32))
                inputs.append(tensor)
            result = tc.infer("breast-cancer", inputs)
            feeds = {n: np.array([[r[n]] for r in rows], dtype=np.float32) for n in rows[0]}
            want_labels, want_probs = reference(bc_artifact, feeds)
            assert [v.decode() for v in result.as_numpy("label")] == want_labels.tolist()
            np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, rtol=1e-6)


def test_tritonclient_mixed_numeric_and_string_features(mixed_server: Any, mixed_artifact: Path) -> None:
    host = mixed_server.url.removeprefix("http://")
    ages = np.array([[25.0], [61.0], [np.nan]], dtype=np.float32)
    incomes = np.array([[40.0], [150.0], [90.0]], dtype=np.float32)
    colors = np.array([["red"], ["blue"], [""]], dtype=object)
    with triton.InferenceServerClient(host) as tc:
        meta = tc.get_model_metadata("mixed")
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
            "age": "FP32",
            "income": "FP32",
            "color": "BYTES",
        }
        for binary in (True, False):
            inputs = [
                triton.InferInput("age", [3, 1], "FP32"),
                triton.InferInput("income", [3, 1], "FP32"),
                triton.InferInput("color", [3, 1], "BYTES"),
            ]
            inputs[0].set_data_from_numpy(ages, binary_data=True)  # NaN (missing) travels only in binary
            inputs[1].set_data_from_numpy(incomes, binary_data=binary)
            inputs[2].set_data_from_numpy(colors, binary_data=binary)
            outputs = [
                triton.InferRequestedOutput("label", binary_data=binary),
                triton.InferRequestedOutput("probabilities", binary_data=binary),
            ]
            result = tc.infer("mixed", inputs, outputs=outputs)
            want_labels, want_probs = reference(
                mixed_artifact, {"age": ages, "income": incomes, "color": colors}
            )
            got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
            assert got == want_labels.tolist()
            np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, rtol=1e-6)


def test_categories_are_normalised_like_training(mixed_server: Any) -> None:
    """' RED ' is not 'red' to the model, but 'NA' and null both mean missing, as in the training CSV."""

    def answer(color: Any) -> Any:
        body = {
            "inputs": [
                {"name": "age", "datatype": "FP32", "shape": [1], "data": [50.0]},
                {"name": "income", "datatype": "FP32", "shape": [1], "data": [100.0]},
                {"name": "color", "datatype": "BYTES", "shape": [1], "data": [color]},
            ]
        }
        response = httpx.post(f"{mixed_server.url}/v2/models/mixed/infer", json=body)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][1]["data"]

    assert answer("NA") == answer(None) == answer("") == answer("  n/a ")
    assert answer(" red ") == answer("red")
    bad = httpx.post(
        f"{mixed_server.url}/v2/models/mixed/infer",
        json={"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [1.0]},
                         {"name": "income", "datatype": "FP32", "shape": [1], "data": [1.0]},
                         {"name": "color", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
    )  # fmt: skip
    assert bad.status_code == 422 and "'color' is a categorical feature" in bad.json()["error"]


def test_ready_only_after_load_and_warm_up(
    bc_artifact: Path, tmp_path: Path, run_server: Any, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    release = threading.Event()
    warmed = []

    class Observed(ModelRuntime):
        def warm_up(self) -> list[np.ndarray]:
            warmed.append(True)
            return super().warm_up()

    def slow_loader() -> ModelRuntime:
        release.wait(30)
        runtime = ModelRuntime.load(bc_artifact)
        runtime.__class__ = Observed
        return runtime

    with run_server(
        Settings(artifact=bc_artifact, log_dir=tmp_path), loader=slow_loader, wait_ready=False
    ) as srv:
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
        assert httpx.get(f"{srv.url}/v2/health/ready").json() == {"ready": False}
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503
        response = httpx.post(f"{srv.url}{INFER}", json=make_body(bc_rows[:1]))
        assert response.status_code == 503 and "still loading" in response.json()["error"]
        release.set()
        assert srv.state.loaded.wait(30)
        assert warmed == [True]
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


def test_failed_load_keeps_server_unready(bc_artifact: Path, tmp_path: Path, run_server: Any) -> None:
    def broken() -> ModelRuntime:
        raise RuntimeError("disk on fire")

    with run_server(Settings(artifact=bc_artifact, log_dir=tmp_path), loader=broken, wait_ready=False) as srv:
        assert srv.state.loaded.wait(30)
        ready = httpx.get(f"{srv.url}/v2/health/ready")
        assert ready.status_code == 503 and "disk on fire" in ready.json()["error"]


# -- fuzzing: thousands of generated bodies, never a 5xx, readiness still true ---------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_datatypes = (
    st.sampled_from(["FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL", "FP16", "UINT8", "bogus"])
    | _json_values
)
_names = st.sampled_from(["mean_radius", "mean_texture", "worst_area", "nope"]) | _json_values
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": _names,
        "datatype": _datatypes,
        "shape": st.lists(st.integers(-2, 3), max_size=3) | _json_values,
        "data": st.lists(
            st.none() | st.floats() | st.integers(-(2**65), 2**65) | st.text(max_size=4) | st.booleans(),
            max_size=4,
        )
        | _json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 8) | _json_values}
        )
        | _json_values,
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(_tensor, max_size=4) | _json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["label", "probabilities", "x"]) | _json_values}),
            max_size=3,
        )
        | _json_values,
        "parameters": _json_values,
        "id": _json_values,
    },
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture(scope="module")
def valid_body(bc_rows: list[dict[str, float]], make_body: Any) -> dict[str, Any]:
    return make_body(bc_rows[:2])


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    generated=_body,
    mutation=st.tuples(
        st.integers(0, 29), st.sampled_from(["shape", "data", "datatype", "name", "parameters"]), _json_values
    ),
    raw=st.binary(max_size=64),
    shared_shape=st.lists(st.integers(0, 2**62) | st.just(1) | st.just(2), min_size=1, max_size=3)
    | _json_values,
    header=st.none()
    | st.integers(-5, 5000).map(str)
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=4),
)
def test_fuzzed_bodies_never_5xx(
    client: httpx.Client,
    valid_body: dict[str, Any],
    generated: dict[str, Any],
    mutation: Any,
    raw: bytes,
    shared_shape: Any,
    header: Any,
) -> None:
    """Kinds of body per example: generated JSON, a valid body with one mutated field, the same shape on every
    input (rows come from the client), and raw bytes (alone and after JSON)."""
    index, field, value = mutation
    mutated = copy.deepcopy(valid_body)
    mutated["inputs"][index][field] = value
    reshaped = copy.deepcopy(valid_body)
    for tensor in reshaped["inputs"]:
        tensor["shape"] = shared_shape
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    # The stdlib encoder writes what orjson refuses (integers beyond 64 bits, NaN/Infinity literals).
    for content in (_dumps(generated), _dumps(mutated), _dumps(reshaped), raw, _dumps(mutated) + raw):
        response = client.post(INFER, content=content, headers=headers)
        assert response.status_code < 500, (content[:300], response.text)
        assert "error" in response.json() or response.status_code == 200


_HOLE = "\u0000hole\u0000"


def _with_hole(body: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A copy of ``body`` with a placeholder at ``path`` (created where missing), to be replaced by raw JSON."""
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
    target[path[-1]] = _HOLE
    return out


def _fill(body: dict[str, Any], raw: str) -> bytes:
    return json.dumps(body).replace(json.dumps(_HOLE), raw).encode()


_PLACES = [
    ("id",),
    ("parameters",),
    ("parameters", "binary_data_output"),
    ("outputs",),
    ("inputs",),
    ("inputs", 0, "name"),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "data"),
    ("inputs", 7, "shape"),  # a later input's shape: the fast path compares every shape
    ("inputs", 29, "shape"),
    ("inputs", 3, "data"),
    ("inputs", 5, "parameters"),
]


def _nested(depth: int, leaf: str = "1", open_: str = "[", close: str = "]") -> str:
    return open_ * depth + leaf + close * depth


@pytest.mark.parametrize("place", _PLACES, ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize(
    "raw",
    [
        _nested(253),
        _nested(254),
        _nested(300),
        _nested(1000),
        _nested(1000, "null", '{"a": ', "}"),
        "1" * 5000,  # an integer of 5,000 digits (Python's int() and repr() refuse 4,300+)
        "-" + "9" * 25,
        "NaN",
        _nested(900, "NaN"),
        _nested(2000),
    ],
    ids=["list253", "list254", "list300", "list1000", "dict1000", "int5000", "int26", "nan", "nan900", "list2000"],
)
def test_deep_and_huge_values_anywhere_are_4xx(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any, place: tuple[Any, ...], raw: str
) -> None:
    """Values nested 253-2,000 deep or integers of 5,000 digits, in every field, JSON-only and with NaN literals
    (which take the standard library's parser): a 4xx naming the problem, never a 5xx."""
    body = _fill(_with_hole(make_body(bc_rows[:2]), place), raw)
    response = client.post(INFER, content=body)
    if response.status_code == 200:  # only where the field may hold anything: request parameters
        assert place[-1] == "parameters", response.text[:300]
    else:
        assert 400 <= response.status_code < 500, response.text[:300]
        assert response.json()["error"]


@pytest.mark.parametrize("digits", [19, 40, 4300, 6000])
def test_huge_inference_header_content_length_is_400(client: httpx.Client, digits: int) -> None:
    response = client.post(INFER, content=b"{}", headers={"Inference-Header-Content-Length": "9" * digits})
    assert response.status_code == 400, response.text[:300]
    assert "Inference-Header-Content-Length" in response.json()["error"]
    assert "expected a number of bytes" in response.json()["error"]


@pytest.mark.parametrize("digits", [19, 40, 4300, 6000])
def test_huge_content_length_is_4xx(bc_server: Any, digits: int) -> None:
    """Raw HTTP: clients refuse to send such a Content-Length, so a socket does."""
    import socket

    host, port = bc_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {'9' * digits}\r\n\r\n{{}}".encode())
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    place=st.sampled_from(_PLACES),
    depth=st.integers(1, 1100),
    kind=st.sampled_from(["list", "dict", "int", "nan-list", "mixed"]),
    digits=st.integers(1, 6000),
    header=st.none() | st.integers(1, 6000).map(lambda n: "7" * n),
    binary=st.booleans(),
)
def test_fuzzed_deep_nesting_huge_integers_and_long_headers_never_5xx(
    client: httpx.Client,
    valid_body: dict[str, Any],
    place: tuple[Any, ...],
    depth: int,
    kind: str,
    digits: int,
    header: str | None,
    binary: bool,
) -> None:
    """The fuzz test's second half: what a generated JSON value cannot be (deeper than the JSON encoders go,
    integers beyond what Python prints, headers of thousands of digits), at every place of a valid body."""
    leaf = "9" * digits
    raw = {
        "list": _nested(depth, leaf),
        "dict": _nested(depth, leaf, '{"k": ', "}"),
        "int": leaf,
        "nan-list": _nested(depth, "NaN"),
        "mixed": _nested(depth // 2, _nested(depth - depth // 2, leaf, '{"k": ', "}")),
    }[kind]
    content = _fill(_with_hole(valid_body, place), raw)
    headers = {}
    if header is not None:
        headers["Inference-Header-Content-Length"] = header
    elif binary:
        headers["Inference-Header-Content-Length"] = str(len(content))
        content += b"\x00" * 8
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code < 500, (content[:200], response.text[:300])
    assert "error" in response.json() or response.status_code == 200


def test_still_ready_after_fuzzing(client: httpx.Client) -> None:
    """Runs after the fuzz test in file order; the server answers readiness and metrics show no 5xx."""
    assert client.get("/v2/health/ready").status_code == 200
    assert 'status="500"' not in client.get("/metrics").text


def test_client_leaving_mid_body_is_counted_not_crashed(bc_server: Any, client: httpx.Client) -> None:
    import socket
    import time

    host, port = bc_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f'POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{"inputs"'.encode())
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while 'endpoint="infer",status="499"' not in client.get("/metrics").text:
        assert time.monotonic() < deadline, "the disconnect was not counted as 499"
        time.sleep(0.05)
    assert client.get("/v2/health/ready").status_code == 200
