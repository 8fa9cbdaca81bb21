"""Drive a running `mlci serve` with kserve's own V2 REST client, ``kserve.InferenceRESTClient``.

Run by tests/serving/test_kserve_client.py with the kserve venv's python (``MLCI_KSERVE_PYTHON``, built by
``make kserve-venv``), never the project's: kserve 0.21.0 cannot share a venv with mlci (protobuf<7,
pandas<3). It imports nothing from mlci.

Reads one job on stdin (JSON; NaN allowed)::

    {"url": "http://127.0.0.1:PORT", "model": "NAME",
     "cases": [{"name": "json", "binary": false,
                "inputs": [{"name": "age", "datatype": "FP32", "shape": [3, 1], "values": [25.0, NaN, 61.0]},
                           ...]}]}

and prints one JSON document on stdout: the kserve version, the client's liveness and readiness answers,
the server and model metadata (fetched with httpx: the REST client has no metadata call) checked against
kserve's own pydantic models of the protocol, and per case what the client sent and what it decoded. In a
``binary`` case every input goes as binary tensor data (``set_data_from_numpy(..., binary_data=True)``) and
every output is requested as binary (``RequestedOutput(name, parameters={"binary_data": True})``); else
both are JSON. A case that raises is reported as ``{"error": ...}`` and the other cases still run.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from typing import Any

# kserve's logging config sends uvicorn's access log to stdout: keep stdout for the result alone.
RESULT = sys.stdout
sys.stdout = sys.stderr

import httpx  # noqa: E402  (kserve's own dependency)
import kserve  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402
from kserve.protocol.infer_type import RequestedOutput  # noqa: E402
from kserve.protocol.rest import v2_datamodels as v2  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": np.object_}


def check(model: type[BaseModel], response: httpx.Response) -> dict[str, Any]:
    """A GET's status and body, and what kserve's pydantic model of that document says about it."""
    doc = response.json()
    try:
        model.model_validate(doc)
        errors = None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    return {"status": response.status_code, "doc": doc, "errors": errors}


def tensor(spec: dict[str, Any], binary: bool) -> InferInput:
    array = np.array(spec["values"], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
    infer_input = InferInput(spec["name"], list(spec["shape"]), spec["datatype"])
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def plain(array: np.ndarray) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]


async def run_case(
    client: InferenceRESTClient,
    http: httpx.AsyncClient,
    url: str,
    model: str,
    outputs: list[str],
    case: dict[str, Any],
) -> dict[str, Any]:
    binary = bool(case["binary"])
    request = InferRequest(
        model_name=model,
        infer_inputs=[tensor(spec, binary) for spec in case["inputs"]],
        request_id=f"kserve-{case['name']}",
        request_outputs=[RequestedOutput(n, parameters={"binary_data": True}) for n in outputs]
        if binary
        else None,
    )
    # what client.infer puts on the wire: to_rest(), then orjson for a JSON body (NaN becomes null)
    body, json_length = request.to_rest()
    header = orjson.loads(orjson.dumps(body) if json_length is None else body[:json_length])
    sent = {"json_length": json_length, "header": header}
    headers: dict[str, str] = {}
    result = await client.infer(url, request, model_name=model, response_headers=headers)
    answer: dict[str, Any] = {
        "sent": sent,
        "response_binary": "inference-header-content-length" in {k.lower() for k in headers},
        "id": result.id,
        "model_name": result.model_name,
        "outputs": {
            o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": plain(o.as_numpy())}
            for o in result.outputs
        },
    }
    if not binary:  # the same JSON body again, raw, checked against kserve's model of a V2 response
        raw = await http.post(f"{url}/v2/models/{model}/infer", content=orjson.dumps(body))
        try:
            v2.InferenceResponse.model_validate_json(raw.content)
            answer["response_errors"] = None
        except ValidationError as exc:
            answer["response_errors"] = exc.errors(include_url=False)
    return answer


async def main(job: dict[str, Any]) -> dict[str, Any]:
    url, model = job["url"], job["model"]
    out: dict[str, Any] = {
        "kserve_version": importlib.metadata.version("kserve"),
        "kserve_file": kserve.__file__,
    }
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    async with client, httpx.AsyncClient(timeout=60) as http:
        out["server_live"] = await client.is_server_live(url)
        out["server_ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        out["unknown_model_ready"] = await client.is_model_ready(url, "no-such-model")
        out["documents"] = {
            "server_metadata": check(v2.ServerMetadataResponse, await http.get(f"{url}/v2")),
            "live": check(v2.ServerLiveResponse, await http.get(f"{url}/v2/health/live")),
            "ready": check(v2.ServerReadyResponse, await http.get(f"{url}/v2/health/ready")),
            "model_metadata": check(v2.ModelMetadataResponse, await http.get(f"{url}/v2/models/{model}")),
            "model_ready": check(v2.ModelReadyResponse, await http.get(f"{url}/v2/models/{model}/ready")),
        }
        outputs = [o["name"] for o in out["documents"]["model_metadata"]["doc"].get("outputs", [])]
        out["cases"] = {}
        for case in job["cases"]:
            try:
                out["cases"][case["name"]] = await run_case(client, http, url, model, outputs, case)
            except Exception as exc:  # report it; the test says what it expected
                out["cases"][case["name"]] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


if __name__ == "__main__":
    result = asyncio.run(main(json.load(sys.stdin)))
    RESULT.write(json.dumps(result))
    RESULT.flush()
