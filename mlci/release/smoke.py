"""Smoke test: the real server, real rows, through the real protocol; served output must equal in-process output.

`run_smoke` starts `mlci serve` as a separate process on a free loopback port (or uses a live URL, for the
post-deploy check), waits for readiness with a bounded timeout, sends holdout rows one at a time (for
latency) and as one batch, and compares every output with onnxruntime run in this process on the same
artifact. The server is always stopped, also on failure; its log tail is quoted when it fails to start.
Every request is marked ``X-MLCI-Traffic: synthetic`` (:mod:`mlci.serving.traffic`): a live server logs it
flagged, and the monitor never takes it for production traffic.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlci.errors import CheckFailed
from mlci.serving.traffic import SYNTHETIC_HEADERS

__all__ = ["ServerProcess", "SmokeReport", "free_port", "run_smoke", "start_server"]

_TAIL = 2000


@dataclass(frozen=True)
class SmokeReport:
    """What smoke.json holds."""

    passed: bool
    digest: str
    url: str
    rows: int
    p50_ms: float
    p99_ms: float
    max_p99_ms: float
    reason: str
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `mlci serve` child process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self) -> str:
        """The last lines the server wrote (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-_TAIL:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: in-flight requests finish, the log is flushed), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(url: str, timeout: float, process: ServerProcess | None = None) -> None:
    """Poll `/v2/health/ready` until it answers 200; raise CheckFailed with the log tail on timeout or exit."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.process.poll() is not None:
                raise CheckFailed(
                    f"The server exited with code {process.process.returncode} before becoming ready.\n"
                    f"Server log (tail):\n{process.log_tail()}"
                )
            try:
                response = client.get(f"{url}/v2/health/ready")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.05)
    tail = f"\nServer log (tail):\n{process.log_tail()}" if process is not None else ""
    raise CheckFailed(f"{url} was not ready within {timeout:.0f} s (last answer: {last}).{tail}")


def start_server(artifact: Path, port: int, log_path: Path, host: str = "127.0.0.1", log_dir: Path | None = None) -> ServerProcess:
    """Start `mlci serve` for ``artifact`` in a new process group (so a stop never hits the caller).

    The server gets this process's environment without the registry credentials (it serves a directory
    and never talks to the registry) and without the build's portable numerics (a server runs with the
    machine's own, as `mlci serve` does anywhere: mlci.numerics.child_environment).
    """
    from mlci.numerics import child_environment
    from mlci.registry.settings import without_credentials

    argv = [sys.executable, "-m", "mlci", "serve", str(artifact), "--host", host, "--port", str(port), "--log-level", "warning"]
    argv += ["--log-dir", str(log_dir)] if log_dir is not None else ["--no-log"]
    log = log_path.open("wb")
    env = without_credentials(child_environment())
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()
    return ServerProcess(process, f"http://{host}:{port}", log_path)


@contextlib.contextmanager
def serving(artifact: Path, timeout: float) -> Iterator[ServerProcess]:
    """A ready server for ``artifact`` on a free port, stopped on exit whatever happens."""
    with tempfile.TemporaryDirectory(prefix="mlci-smoke-") as tmp:
        server = start_server(artifact, free_port(), Path(tmp) / "server.log")
        try:
            wait_ready(server.url, timeout, server)
            yield server
        finally:
            server.stop()


def _request(schema: list[dict[str, Any]], X: Any) -> dict[str, Any]:
    inputs = []
    for feature in schema:
        column = X[feature["name"]].tolist()
        if feature["datatype"] == "FP32":
            column = [None if v != v else float(np.float32(v)) for v in column]  # NaN → null (missing)
        inputs.append({"name": feature["name"], "datatype": feature["datatype"], "shape": [len(column), 1], "data": column})
    return {"inputs": inputs}


def _compare(served: dict[str, Any], expected: dict[str, np.ndarray], offset: int, tolerance: float) -> list[dict[str, Any]]:
    bad = []
    outputs = {o["name"]: o for o in served.get("outputs", [])}
    for name, want in expected.items():
        if name not in outputs:
            bad.append({"row": offset, "output": name, "problem": f"missing; served {sorted(outputs)}"})
            continue
        got = np.asarray(outputs[name]["data"], dtype=want.dtype if want.dtype != object else object).reshape(want.shape[0], -1)
        want2 = want.reshape(want.shape[0], -1)
        for i in range(want2.shape[0]):
            if want.dtype == object:
                equal = [str(a) for a in got[i]] == [str(b) for b in want2[i]]
            else:
                equal = bool(np.allclose(got[i].astype(np.float64), want2[i].astype(np.float64), rtol=0, atol=tolerance))
            if not equal:
                bad.append({"row": offset + i, "output": name, "served": got[i].tolist(), "in_process": want2[i].tolist()})
    return bad


def run_smoke(
    artifact: Path, X: Any, *, max_p99_ms: float, timeout_s: float = 30.0, url: str | None = None, tolerance: float = 1e-6
) -> SmokeReport:
    """Serve ``artifact`` (or use the live ``url``), send the rows of ``X``, compare, and measure latency."""
    import httpx

    from mlci.model.artifact import verify_artifact
    from mlci.model.data import Schema
    from mlci.model.onnxio import feeds_from_frame, open_session

    manifest = verify_artifact(artifact)
    features = manifest["schema"]["features"]

    def in_process() -> dict[str, np.ndarray]:
        try:
            session = open_session(artifact / "model.onnx")
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckFailed(f"onnxruntime cannot load {artifact / 'model.onnx'}: {exc}") from exc
        names = [o.name for o in session.get_outputs()]
        feeds = feeds_from_frame(X, Schema.from_json(manifest["schema"]))
        return dict(zip(names, session.run(names, feeds), strict=True))

    def exercise(base: str) -> SmokeReport:
        expected_all = in_process()
        infer = f"{base}/v2/models/{manifest['name']}/infer"
        latencies, mismatches = [], []
        with httpx.Client(timeout=10.0, headers=SYNTHETIC_HEADERS) as client:  # logged flagged, not monitored
            for i in range(len(X)):
                body = _request(features, X.iloc[[i]])
                t0 = time.perf_counter()
                response = client.post(infer, json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    mismatches.append({"row": i, "problem": f"HTTP {response.status_code}: {response.text[:300]}"})
                    continue
                mismatches += _compare(response.json(), {k: v[i : i + 1] for k, v in expected_all.items()}, i, tolerance)
            response = client.post(infer, json=_request(features, X))
            if response.status_code != 200:
                mismatches.append({"row": "batch", "problem": f"HTTP {response.status_code}: {response.text[:300]}"})
            else:
                mismatches += _compare(response.json(), expected_all, 0, tolerance)
        p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
        if mismatches:
            reason = f"{len(mismatches)} served outputs differ from in-process onnxruntime (first: {mismatches[0]})"
        elif p99 > max_p99_ms:
            reason = f"served p99 latency {p99:.2f} ms is over the {max_p99_ms} ms budget ([smoke] max_p99_ms)"
        else:
            reason = f"{len(X)} rows served equal to in-process output (single rows and one batch); p99 {p99:.2f} ms"
        return SmokeReport(not mismatches and p99 <= max_p99_ms, manifest["digest"], base, len(X), round(p50, 3), round(p99, 3), max_p99_ms, reason, mismatches[:20])

    if url is not None:
        wait_ready(url, timeout_s)
        return exercise(url.rstrip("/"))
    with serving(artifact, timeout_s) as server:
        return exercise(server.url)
