"""The serving runtime leaves out the training stack: `mlci serve` and `mlci monitor` run without it.

Trains the bundled example with the local mlci, then serves it and runs a monitor cycle in processes where
importing any package the module drops from the serving image (SERVING_DROPS) raises ImportError.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REPO
from .replay import MLCI

pytestmark = pytest.mark.skipif(
    not MLCI.exists(), reason=f"the mlci console script is not installed at {MLCI}"
)

BLOCKER = """
import sys
BLOCKED = {blocked!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is left out of the serving image")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_serve_and_monitor_need_none_of_the_dropped_packages(tmp_path: Path) -> None:
    from mlci_dagger.main import SERVING_DROPS

    src = tmp_path / "src"
    shutil.copytree(REPO / "examples" / "breast_cancer", src, ignore=shutil.ignore_patterns(".mlci"))
    built = subprocess.run(
        [str(MLCI), "run", "--until", "evaluate", "--json"],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    artifact = json.loads(built.stdout)["artifact"]
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(SERVING_DROPS.values())))
    env = {"PYTHONPATH": str(tmp_path / "block"), "PATH": "/usr/bin:/bin"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "predictions"
    server = subprocess.Popen(
        [str(MLCI), "serve", artifact, "--host", "127.0.0.1", "--port", str(port), "--log-dir", str(logs)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
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
        smoke = subprocess.run(
            [str(MLCI), "smoke", artifact, "--url", f"http://127.0.0.1:{port}"],
            cwd=src,
            capture_output=True,
            text=True,
            check=False,
        )  # the client is unrestricted: it reads holdout rows with pandas/scikit-learn as `mlci smoke` does
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert list(logs.iterdir()), "the server wrote no prediction log"
    monitor = subprocess.run(
        [str(MLCI), "monitor", artifact, "--log-dir", str(logs), "--state", str(tmp_path / "state"), "--interval", "0", "--cycles", "1"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    assert "cycle 1" in monitor.stdout
