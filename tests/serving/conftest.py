"""Real artifacts (trained by our own pipeline) and real servers on 127.0.0.1 for the serving tests."""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mlci.config import load_config
from mlci.pipeline import run_pipeline
from mlci.serving.app import ServerState, create_app
from mlci.serving.server import uvicorn_config
from mlci.serving.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "breast_cancer"


@pytest.fixture(scope="session")
def bc_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled breast-cancer example: 30 numeric features, LogisticRegression, labels benign/malignant."""
    root = tmp_path_factory.mktemp("bc")
    shutil.copy(EXAMPLE / "mlci.toml", root / "mlci.toml")
    shutil.copy(EXAMPLE / "data.csv", root / "data.csv")
    return Path(run_pipeline(load_config(root / "mlci.toml")).artifact)


@pytest.fixture(scope="session")
def bc_rows() -> list[dict[str, float]]:
    """The first 64 rows of the example data (features only), as floats."""
    with (EXAMPLE / "data.csv").open() as f:
        rows = list(csv.DictReader(f))[:64]
    return [{k: float(v) for k, v in row.items() if k != "target"} for row in rows]


MIXED_TOML = """
[model]
name = "mixed"
task = "classification"

[data]
path = "data.csv"
target = "bought"

[split]
holdout = 0.25
seed = 3

[estimator]
class = "sklearn.linear_model.LogisticRegression"
params = { max_iter = 500 }
scale = true
"""


@pytest.fixture(scope="session")
def mixed_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two numeric features (with gaps) and a string category (with gaps); schema inferred."""
    root = tmp_path_factory.mktemp("mixed")
    rng = random.Random(11)
    with (root / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["age", "income", "color", "bought"])
        for i in range(240):
            age = rng.randint(18, 80)
            income = round(rng.uniform(10, 200), 2)
            color = rng.choice(["red", "green", "blue"])
            score = (age > 40) + (color == "red") + (income > 120) + rng.random()
            writer.writerow(
                [
                    "" if i % 17 == 0 else age,
                    "NA" if i % 23 == 0 else income,
                    "" if i % 19 == 0 else color,
                    "yes" if score > 1.5 else "no",
                ]
            )
    (root / "mlci.toml").write_text(MIXED_TOML)
    return Path(run_pipeline(load_config(root / "mlci.toml")).artifact)


def v2_body(
    rows: list[dict[str, Any]], datatypes: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A JSON V2 request: one [N] tensor per feature (FP32 unless ``datatypes`` says otherwise)."""
    names = list(rows[0])
    datatypes = datatypes or {}
    inputs = [
        {"name": n, "datatype": datatypes.get(n, "FP32"), "shape": [len(rows)], "data": [r[n] for r in rows]}
        for n in names
    ]
    return {"inputs": inputs, **extra}


@dataclass
class Running:
    """A server running in this process: its base URL, shared state and prediction-log directory."""

    url: str
    state: ServerState
    log_dir: Path | None


@contextmanager
def running(
    settings: Settings, loader: Callable[[], Any] | None = None, wait_ready: bool = True
) -> Iterator[Running]:
    """Real uvicorn (uvloop + httptools) on 127.0.0.1 in a thread, like httpx's test server; configured by
    the same function as `mlci serve` (timeouts, connection cap), so the tests see the real settings."""
    sock = socket.create_server(("127.0.0.1", 0))
    app = create_app(settings, loader=loader)
    server = uvicorn.Server(uvicorn_config(settings, app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "server died during startup; see the log above"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    state: ServerState = app.state.mlci
    if wait_ready:
        assert state.loaded.wait(30), "model did not load within 30 s"
        assert state.runtime is not None, state.load_error
    try:
        log_dir = state.settings.log_dir
        yield Running(url, state, log_dir if isinstance(log_dir, Path) else None)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="session")
def bc_server(bc_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One shared breast-cancer server for the route tests (small body limit to test 413 cheaply)."""
    settings = Settings(
        artifact=bc_artifact, log_dir=tmp_path_factory.mktemp("bc-log"), max_body_bytes=2_000_000
    )
    with running(settings) as srv:
        yield srv


@pytest.fixture(scope="session")
def mixed_server(mixed_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server for the mixed numeric/string model."""
    with running(Settings(artifact=mixed_artifact, log_dir=tmp_path_factory.mktemp("mixed-log"))) as srv:
        yield srv


@pytest.fixture
def client(bc_server: Running) -> Iterator[httpx.Client]:
    """An httpx client on the shared breast-cancer server."""
    with httpx.Client(base_url=bc_server.url, timeout=30) as c:
        yield c


def free_port() -> int:
    """A port that was free a moment ago (for servers started as subprocesses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(
    artifact: Path,
    log_dir: Path | None,
    *extra: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`mlci serve` as a real subprocess; waits until ready; SIGKILLs it only if a test left it running.

    ``log_dir`` None passes no ``--log-dir`` (the server picks its default); ``env`` is added to this
    process's environment. The server's stdout and stderr are the process's ``stdout`` pipe."""
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlci"),
            "serve",
            str(artifact),
            "--port",
            str(port),
            *(["--log-dir", str(log_dir)] if log_dir is not None else []),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"mlci serve exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlci serve was not ready within 60 s"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


# Helpers reach the test files as fixtures (importing from conftest breaks when several test
# directories each have one).
@pytest.fixture(scope="session")
def make_body() -> Callable[..., dict[str, Any]]:
    """:func:`v2_body`."""
    return v2_body


@pytest.fixture(scope="session")
def run_server() -> Callable[..., Any]:
    """:func:`running`."""
    return running


@pytest.fixture(scope="session")
def serve_subprocess() -> Callable[..., Any]:
    """:func:`serve_process`."""
    return serve_process
