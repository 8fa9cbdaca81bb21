"""The smoke and gate command lines from the graphs, run here against the real server and gate.

`smoke` wires two containers: the serving image's entrypoint and a client running `mlci smoke --url`.
Running both argv locally (the service alias mapped to 127.0.0.1 and a free port) checks that the two
halves the module wires together work with each other, and that the gate then accepts their report.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, Caller
from .engine import FakeEngine
from .replay import MLCI, local_argv, make_empty_dirs, run_mlci
from .test_gate import answer_gate

pytestmark = pytest.mark.skipif(not MLCI.exists(), reason=f"the mlci console script is not installed at {MLCI}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_artifact_passes_the_modules_smoke_and_gate(call: Caller, engine: FakeEngine, manifest: dict[str, Any], tmp_path: Path) -> None:
    answer_gate(engine)
    gate = engine.graph(call("gate"))
    gate_argv = gate.execs()[-1]
    smoke_file = next(c["source"] for c in gate.calls("withFile") if c["path"] == "/mlci/in/smoke.json")
    client = engine.graph(smoke_file)
    smoke_argv = client.execs()[-1]
    alias = client.one("withServiceBinding")["alias"]
    serve_argv = engine.graph(client.one("withServiceBinding")["service"]).one("withEntrypoint")["args"]

    src = tmp_path / "src"
    shutil.copytree(REPO / "examples" / "breast_cancer", src, ignore=shutil.ignore_patterns(".mlci"))
    built = run_mlci(["mlci", "run", "--config", "mlci.toml", "--until", "evaluate", "--json"], {}, cwd=src)
    assert built.returncode == 0, built.stderr
    paths = {"/src": src, "/mlci/out": tmp_path / "out", "/mlci/artifact": Path(json.loads(built.stdout)["artifact"]),
             "/mlci/in/smoke.json": tmp_path / "out" / "smoke.json"}  # fmt: skip

    make_empty_dirs(gate, paths)  # both containers start from base(): the same directories exist
    make_empty_dirs(client, paths)
    port = free_port()
    serve = local_argv(serve_argv, paths)
    serve[serve.index("--host") + 1], serve[serve.index("--port") + 1] = "127.0.0.1", str(port)
    server = subprocess.Popen([str(MLCI), *serve[1:], "--no-log"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else "server exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.1)
        smoke = [a.replace(f"http://{alias}:8080", f"http://127.0.0.1:{port}") for a in smoke_argv]
        done = run_mlci(smoke, paths, cwd=src)
        assert done.returncode == 0, f"{smoke_argv}:\n{done.stdout}\n{done.stderr}"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert json.loads((tmp_path / "out" / "smoke.json").read_text())["passed"] is True

    done = run_mlci(gate_argv, paths, cwd=src)
    assert done.returncode == 0, f"{gate_argv}:\n{done.stdout}\n{done.stderr}"
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert verdict["passed"] is True and verdict["first_run"] is True
    assert "|" in done.stdout  # the Markdown table the PR comment gets
