"""Real artifacts, real prediction logs and a real webhook receiver on 127.0.0.1 for the monitor tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlci.config import load_config
from mlci.pipeline import run_pipeline
from mlci.serving.predlog import pack_array, pack_labels

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "breast_cancer"


@dataclass
class Project:
    """A trained breast-cancer project: its config, artifact, manifest and the rows it was split into."""

    config: Path
    artifact: Path
    manifest: dict[str, Any]
    holdout: pd.DataFrame
    truth: list[str]
    data: pd.DataFrame


@pytest.fixture(scope="session")
def bc(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The bundled example trained up to evaluate (30 numeric features, benign/malignant)."""
    from mlci.model.data import holdout_mask
    from mlci.model.train import load_data

    root = tmp_path_factory.mktemp("bc")
    shutil.copy(EXAMPLE / "mlci.toml", root / "mlci.toml")
    shutil.copy(EXAMPLE / "data.csv", root / "data.csv")
    config = load_config(root / "mlci.toml")
    artifact = Path(run_pipeline(config, until="evaluate").artifact)
    manifest = orjson.loads((artifact / "manifest.json").read_bytes())
    dataset = load_data(config)
    mask = holdout_mask(dataset, config.holdout, config.seed)
    holdout = dataset.X[mask].reset_index(drop=True)
    truth = [str(v) for v in dataset.y[mask]]
    return Project(root / "mlci.toml", artifact, manifest, holdout, truth, pd.read_csv(root / "data.csv"))


def predict_records(
    artifact: Path,
    frame: pd.DataFrame,
    *,
    batch: int = 1,
    start: int = 0,
    prefix: str = "req",
    synthetic: bool | None = False,
) -> list[dict[str, Any]]:
    """Prediction-log records for ``frame`` exactly as the server writes them (serving/predlog.py), outputs
    from the real model.onnx: the numeric features packed as one float32 feature-major ``(n_numeric, rows)``
    matrix (NaN missing), categorical features as string lists (``""`` missing), numeric outputs packed,
    class labels as packed indices plus the class names. ``synthetic`` is the traffic mark (True: a smoke
    test's request); None leaves the key out, as a server from before traffic marking did."""
    from mlci.model.onnxio import open_session

    manifest = orjson.loads((artifact / "manifest.json").read_bytes())
    features = manifest["schema"]["features"]
    numeric = [f["name"] for f in features if f["kind"] == "numeric"]
    session = open_session(artifact / "model.onnx")
    names = [o.name for o in session.get_outputs()]
    records = []
    for i, lo in enumerate(range(0, len(frame), batch)):
        part = frame.iloc[lo : lo + batch]
        feeds, categories = {}, {}
        # feature-major (n_numeric, rows), as the server holds and logs it; NaN stays NaN
        matrix = part[numeric].to_numpy(np.float32).T if numeric else None
        for f in features:
            if f["kind"] == "numeric":
                assert matrix is not None
                feeds[f["name"]] = np.ascontiguousarray(matrix[[numeric.index(f["name"])]].T)
            else:
                text = ["" if v is None or v != v else str(v) for v in part[f["name"]].to_numpy()]
                feeds[f["name"]] = np.array(text, dtype=object).reshape(-1, 1)
                categories[f["name"]] = text
        outs = [np.asarray(o) for o in session.run(None, feeds)]
        record: dict[str, Any] = {
            "id": f"{prefix}-{start + i}", "ts": 1767225600.0 + start + i, "model": manifest["name"],
            "digest": manifest["digest"], "rows": len(part),
        }  # fmt: skip
        if synthetic is not None:
            record["synthetic"] = synthetic
        if matrix is not None:
            record["numeric"] = pack_array(matrix)
        record["inputs"] = categories
        classes = [str(c) for c in manifest["schema"].get("classes") or []]
        record["outputs"] = {
            name: (
                pack_array(out)
                if out.dtype.kind in "fiub"
                # class labels as the server logs them: indices into the classes, plus the names
                else pack_labels(classes, np.array([classes.index(str(v)) for v in out.ravel()]))
                if classes
                else out.tolist()
            )
            for name, out in zip(names, outs, strict=True)
        }
        records.append(record)
    return records


def write_log(directory: Path, records: list[dict[str, Any]], name: str = "predictions.jsonl") -> Path:
    """Append records to a prediction-log file, one JSON line each."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def shifted(
    frame: pd.DataFrame, columns: list[str], scale: float = 1.0, shift_sd: float = 0.0
) -> pd.DataFrame:
    """A copy with ``columns`` scaled and shifted by ``shift_sd`` standard deviations."""
    out = frame.copy()
    for c in columns:
        out[c] = out[c] * scale + shift_sd * frame[c].std()
    return out


@dataclass
class Receiver:
    """What the webhook receiver saw, and how it answers."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    script: list[int] = field(default_factory=list)  # answered first, one per request, before ``status``
    answer: Any = None  # the JSON body of every answer (default: {"ok": status < 300})
    headers: dict[str, str] = field(default_factory=dict)  # extra answer headers (e.g. a redirect's Location)

    def bodies(self) -> list[dict[str, Any]]:
        """JSON bodies of the requests answered 2xx."""
        return [r["body"] for r in self.requests if 200 <= r["status"] < 300]


class ReceiverServer:
    """A starlette app under uvicorn in a thread; can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.receiver = Receiver(f"http://127.0.0.1:{self.port}/hook")
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def _app(self) -> Starlette:
        receiver = self.receiver

        async def hook(request: Request) -> JSONResponse:
            body = await request.body()
            status = receiver.script.pop(0) if receiver.script else receiver.status
            receiver.requests.append(
                {"headers": dict(request.headers), "body": orjson.loads(body), "status": status}
            )
            answer = receiver.answer if receiver.answer is not None else {"ok": status < 300}
            return JSONResponse(answer, status_code=status, headers=receiver.headers)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.server = uvicorn.Server(uvicorn.Config(self._app(), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "webhook receiver died during startup; see log above"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join()
            self.server = self.thread = None


@pytest.fixture
def webhook() -> Iterator[ReceiverServer]:
    """A running webhook receiver (the test may stop and restart it)."""
    server = ReceiverServer()
    server.start()
    yield server
    server.stop()
