"""kserve's own V2 REST client (``kserve.InferenceRESTClient``, kserve 0.21.0) against a real server on 127.0.0.1.

kserve cannot live in the project venv: it requires protobuf<7 and pandas<3, and constraints.txt pins
protobuf 7.36.2 and pandas 3.1.1. So `make test` builds ``.venv-kserve`` from kserve-requirements.txt and
passes its interpreter as ``MLCI_KSERVE_PYTHON``; each model's session server is driven once by
kserve_probe.py run with that interpreter, and the tests compare what kserve's client decoded with the
predictions of a :class:`ModelRuntime` loaded in this process. Without ``MLCI_KSERVE_PYTHON`` the tests
skip (plain ``pytest``); with it set to an interpreter that cannot import kserve they fail.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlci.serving.runtime import ModelRuntime

HERE = Path(__file__).resolve().parent
PROBE = HERE / "kserve_probe.py"
REQUIREMENTS = HERE / "kserve-requirements.txt"
ENV = "MLCI_KSERVE_PYTHON"
REBUILD = (
    "Rebuild the kserve venv from the repository root: `rm -rf .venv-kserve && make kserve-venv` "
    "(`make test` builds it too, and sets MLCI_KSERVE_PYTHON)."
)
PINNED = re.search(r"^kserve==(\S+)$", REQUIREMENTS.read_text(), re.M)
KSERVE_VERSION = PINNED.group(1) if PINNED else "?"
# float32 tolerance: both sides run the same float32 graph on the same float32 inputs
EPS32 = float(np.finfo(np.float32).eps)
TOLERANCE = {"rtol": 4 * EPS32, "atol": EPS32}


@functools.cache
def _interpreter_problem(value: str) -> str | None:
    """Why ``value`` is not a usable kserve interpreter, or None (checked once per session)."""
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return f"{ENV}={value} is not an executable file."
    code = "import importlib.metadata, kserve; print(importlib.metadata.version('kserve'))"
    try:
        done = subprocess.run([value, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{ENV}={value} could not run `import kserve`: {exc!r}."
    if done.returncode != 0:
        return f"{ENV}={value} cannot import kserve (exit {done.returncode}):\n{done.stderr[-3000:]}"
    if done.stdout.strip() != KSERVE_VERSION:
        return (
            f"{ENV}={value} has kserve {done.stdout.strip()}, but {REQUIREMENTS.name} pins {KSERVE_VERSION}."
        )
    return None


UNSET = (
    f"{ENV} is unset: run the kserve client tests through `make test`, which builds .venv-kserve "
    f"(kserve=={KSERVE_VERSION}, which cannot share the project venv) and sets {ENV}."
)
# skips before the servers start; kserve_python() is what fails a test whose interpreter is set but broken
needs_kserve = pytest.mark.skipif(not os.environ.get(ENV), reason=UNSET)


def kserve_python(environ: Mapping[str, str] = os.environ) -> str:
    """The kserve venv's interpreter: skip when unset (not run through `make test`), fail when broken."""
    value = environ.get(ENV, "")
    if not value:
        pytest.skip(UNSET)
    problem = _interpreter_problem(value)
    if problem is not None:
        pytest.fail(f"{problem}\n{REBUILD}", pytrace=False)
    return value


@dataclass(repr=False)
class Model:
    """A served model, its inputs in schema order, a batch of rows and the in-process predictions."""

    name: str
    url: str
    runtime: ModelRuntime  # loaded here from the artifact, not the server's own
    inputs: list[tuple[str, str]]  # (name, V2 datatype), schema order
    columns: dict[str, list[Any]]  # name -> one value per row
    shape: list[int]  # the shape every input is sent with
    want: dict[str, np.ndarray]  # output name -> in-process prediction

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.inputs]

    def __repr__(self) -> str:  # short, for pytest's failure reports
        return f"Model({self.name!r}, {self.url}, {self.rows} rows)"


def model_for(server: Any, artifact: Path, columns: dict[str, list[Any]], one_d: bool) -> Model:
    runtime = ModelRuntime.load(artifact)
    inputs = [(s.name, s.datatype) for s in runtime.info.inputs]
    feeds = {
        name: np.array(columns[name], dtype=object if datatype == "BYTES" else np.float32).reshape(-1, 1)
        for name, datatype in inputs
    }
    want = dict(zip(runtime.output_names, runtime.run(feeds), strict=True))
    rows = len(columns[inputs[0][0]])
    return Model(
        runtime.info.name, server.url, runtime, inputs, columns, [rows] if one_d else [rows, 1], want
    )


@pytest.fixture(scope="module")
def bc_model(bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]]) -> Model:
    """The breast-cancer model: 30 FP32 features; the 64 example rows, sent as [64, 1]."""
    columns = {name: [row[name] for row in bc_rows] for name in bc_rows[0]}
    return model_for(bc_server, bc_artifact, columns, one_d=False)


@pytest.fixture(scope="module")
def mixed_model(mixed_server: Any, mixed_artifact: Path) -> Model:
    """The mixed model: age, income (FP32, with a NaN = missing) and color (BYTES, with '' = missing); [16]."""
    colors = ["red", "green", "blue", ""]
    columns = {
        "age": [float("nan") if i == 5 else float(20 + 4 * i) for i in range(16)],
        "income": [round(15.5 + 12.25 * i, 2) for i in range(16)],
        "color": [colors[i % 4] for i in range(16)],
    }
    return model_for(mixed_server, mixed_artifact, columns, one_d=True)


CASES = {"json": False, "binary": True, "json-permuted": False, "binary-permuted": True}


def permuted(names: list[str]) -> list[str]:
    """A non-schema order: reversed."""
    return names[::-1]


def run_probe(python: str, model: Model) -> dict[str, Any]:
    names = model.names
    datatypes = dict(model.inputs)
    cases = []
    for case, binary in CASES.items():
        order = permuted(names) if case.endswith("-permuted") else names
        inputs = [
            {"name": n, "datatype": datatypes[n], "shape": model.shape, "values": model.columns[n]}
            for n in order
        ]
        cases.append({"name": case, "binary": binary, "inputs": inputs})
    job = json.dumps({"url": model.url, "model": model.name, "cases": cases})  # NaN: Python's json reads it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    done = subprocess.run(
        [python, "-I", str(PROBE)], input=job, capture_output=True, text=True, timeout=300, env=env
    )
    if done.returncode != 0:
        pytest.fail(f"{PROBE.name} exited with {done.returncode}:\n{done.stderr[-5000:]}", pytrace=False)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{PROBE.name} printed no JSON:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}", pytrace=False
        )
    return result


class Probes:
    """kserve_probe.py's answer for each model, run once per module (the first test that needs it)."""

    def __init__(self) -> None:
        self._done: dict[str, dict[str, Any]] = {}

    def __call__(self, model: Model) -> dict[str, Any]:
        python = kserve_python()  # in the test itself: an unusable interpreter fails the test, not its setup
        if model.name not in self._done:
            self._done[model.name] = run_probe(python, model)
        return self._done[model.name]


@pytest.fixture(scope="module")
def probes() -> Probes:
    return Probes()


@pytest.fixture(params=["bc", "mixed"])
def model(request: pytest.FixtureRequest) -> Model:
    return request.getfixturevalue(f"{request.param}_model")  # type: ignore[no-any-return]


def assert_predictions(model: Model, answer: dict[str, Any], case: str) -> None:
    """kserve's decoded outputs equal the in-process ones: labels exactly, probabilities to float32 rounding."""
    assert "error" not in answer, f"case {case!r}: kserve's client raised {answer['error']}"
    assert answer["id"] == f"kserve-{case}" and answer["model_name"] == model.name
    outputs = answer["outputs"]
    assert list(outputs) == model.runtime.output_names
    for name, want in model.want.items():
        got = outputs[name]
        assert got["shape"] == list(want.shape), f"{case}: output {name!r}"
        if want.dtype == object:  # the class labels
            assert got["datatype"] == "BYTES"
            wrong = [i for i, (g, w) in enumerate(zip(got["data"], want.tolist(), strict=True)) if g != w]
            assert not wrong, (
                f"{case}: {len(wrong)} of {model.rows} labels differ from in-process, rows {wrong[:10]}: "
                f"got {[got['data'][i] for i in wrong[:5]]}, want {[want[i] for i in wrong[:5]]}"
            )
        else:
            np.testing.assert_allclose(
                np.array(got["data"], dtype=np.float64).reshape(want.shape),
                want,
                **TOLERANCE,
                err_msg=f"{case}: output {name!r} against in-process",
            )


def assert_sent_as(answer: dict[str, Any], binary: bool) -> None:
    """What kserve's client put on the wire and got back really was binary (or JSON) tensor data."""
    sent = answer["sent"]
    assert (sent["json_length"] is not None) is binary
    for tensor in sent["header"]["inputs"]:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        assert (size is not None and "data" not in tensor) is binary, tensor
    assert answer["response_binary"] is binary


@needs_kserve
def test_kserve_health_readiness_and_metadata(model: Model, probes: Probes) -> None:
    result = probes(model)
    assert result["kserve_version"] == KSERVE_VERSION
    venv = Path(kserve_python()).parent.parent  # kserve came from that venv, not from this one
    assert Path(result["kserve_file"]).is_relative_to(venv), result["kserve_file"]
    assert result["server_live"] is True and result["server_ready"] is True
    assert result["model_ready"] is True and result["unknown_model_ready"] is False
    documents = result["documents"]
    for name, document in documents.items():  # every document is valid to kserve's own pydantic models
        assert document["status"] == 200 and document["errors"] is None, (name, document)
    assert "binary_tensor_data" in documents["server_metadata"]["doc"]["extensions"]
    meta = documents["model_metadata"]["doc"]
    assert meta["name"] == model.name
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == model.inputs
    assert [o["name"] for o in meta["outputs"]] == model.runtime.output_names


@needs_kserve
def test_kserve_json_infer_matches_in_process(model: Model, probes: Probes) -> None:
    answer = probes(model)["cases"]["json"]
    assert_predictions(model, answer, "json")
    assert_sent_as(answer, binary=False)
    assert answer["response_errors"] is None, answer["response_errors"]  # kserve's InferenceResponse model
    for tensor in answer["sent"]["header"]["inputs"]:  # NaN (missing) goes as JSON null, as we read it
        nan = [
            i for i, v in enumerate(model.columns[tensor["name"]]) if isinstance(v, float) and math.isnan(v)
        ]
        assert [i for i, v in enumerate(tensor["data"]) if v is None] == nan


@needs_kserve
def test_kserve_binary_infer_matches_in_process(model: Model, probes: Probes) -> None:
    answer = probes(model)["cases"]["binary"]
    assert_predictions(model, answer, "binary")
    assert_sent_as(answer, binary=True)


@needs_kserve
def test_kserve_json_inputs_in_any_order(model: Model, probes: Probes) -> None:
    answer = probes(model)["cases"]["json-permuted"]
    assert [t["name"] for t in answer["sent"]["header"]["inputs"]] == permuted(model.names)
    assert_predictions(model, answer, "json-permuted")


@needs_kserve
def test_kserve_binary_inputs_in_any_order(model: Model, probes: Probes) -> None:
    """Binary tensors follow one another in the order of the request's inputs, not the schema's."""
    answer = probes(model)["cases"]["binary-permuted"]
    if "sent" in answer:
        assert [t["name"] for t in answer["sent"]["header"]["inputs"]] == permuted(model.names)
    assert_predictions(model, answer, "binary-permuted")
    assert_sent_as(answer, binary=True)


def test_interpreter_check_skips_when_unset_and_fails_when_broken(tmp_path: Path) -> None:
    """Plain `pytest` skips these tests naming `make test`; a set but broken interpreter fails them."""
    with pytest.raises(pytest.skip.Exception, match="make test"):
        kserve_python({})
    with pytest.raises(pytest.fail.Exception, match=r"not an executable file(.|\n)*make kserve-venv"):
        kserve_python({ENV: str(tmp_path / "no-python")})
    # the project's own interpreter is executable but has no kserve
    with pytest.raises(pytest.fail.Exception, match=r"cannot import kserve(.|\n)*make kserve-venv"):
        kserve_python({ENV: sys.executable})
