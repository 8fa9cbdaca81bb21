"""Serving benchmark: `mlci serve` vs MLServer vs a constant-JSON floor, with wrk; rewrites RESULTS.md's serving section.

Usage: .venv/bin/python bench/bench_serving.py [--duration 10] [--mlserver bench/.work/mlserver-venv]

Every server runs pinned to core 0 (`taskset -c 0`, inherited by MLServer's worker processes) and wrk
runs pinned to core 1, one wrk thread, keep-alive connections, on 127.0.0.1.
MLServer needs its own venv (it pins its own FastAPI/uvicorn stack):
    python3.11 -m venv bench/.work/mlserver-venv && bench/.work/mlserver-venv/bin/pip install mlserver mlserver-sklearn
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work" / "serving"
EXAMPLE = REPO / "examples" / "breast_cancer"
LUA = REPO / "bench" / "post.lua"
VENV_BIN = Path(sys.executable).parent
SERVER_CPU, CLIENT_CPU = "0", "1"
BATCH = 1024
SUSTAINED_S = 30


def disk_write_mb_s(directory: Path, megabytes: int = 2048, *, sync: bool = True) -> float:
    """Sequential write speed where the log lives, in MB/s: to the disk (dd with fdatasync), or into the page
    cache only (``sync=False``, a new file: what a buffered log write costs before writeback)."""
    target = directory / "dd-probe"
    done = subprocess.run(
        [
            "dd",
            "if=/dev/zero",
            f"of={target}",
            "bs=1M",
            f"count={megabytes}",
            *(["conv=fdatasync"] if sync else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    target.unlink(missing_ok=True)
    seconds = float(done.stderr.strip().splitlines()[-1].split(",")[-2].split()[0])
    return megabytes * 1.048576 / seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready ({url})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


# Server process group by base URL, so each wrk run can read the server's CPU time (see cpu_seconds).
_GROUPS: dict[str, int] = {}


def cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every process in the group (MLServer's workers included)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(
    argv: list[str],
    ready_url: str,
    cwd: Path | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[None]:
    """Start ``argv`` pinned to the server core; SIGTERM it (and its process group) afterwards."""
    out = (log or WORK / "server.log").open("ab")
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *argv],
        cwd=cwd,
        stdout=out,
        stderr=out,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_ready(ready_url, proc)
        time.sleep(1.0)  # let start-up work (imports, JIT-ish warm paths) settle
        _GROUPS[ready_url.split("/", 3)[2]] = proc.pid
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()


def wrk(
    url: str, body: Path, connections: int, seconds: int, header_length: int | None = None
) -> dict[str, Any]:
    """One wrk run on the client core; returns req/s, p50/p99 (ms) and error counts from post.lua's JSON line."""
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "-s",
        str(LUA),
        url,
    ]
    env = {
        **os.environ,
        "BODY": str(body),
        "HEADER_LENGTH": "" if header_length is None else str(header_length),
    }
    group = _GROUPS.get(url.split("/", 3)[2])
    calls_before = onnxruntime_calls(url)
    cpu_before = cpu_seconds(group) if group else 0.0
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    cpu_used = cpu_seconds(group) - cpu_before if group else float("nan")
    calls_after = onnxruntime_calls(url)
    line = next(line for line in done.stdout.splitlines() if line.startswith("JSON "))
    raw = json.loads(line[5:])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "non2xx": raw["non2xx"],
        "socket_errors": raw["socket_errors"],
        "requests": raw["requests"],
        "cpu_us_per_request": cpu_used / max(raw["requests"], 1) * 1e6,
        "rows_per_call": (
            (calls_after[1] - calls_before[1]) / max(calls_after[0] - calls_before[0], 1)
            if calls_before and calls_after
            else None
        ),
        "command": f"BODY={body.relative_to(REPO)}{f' HEADER_LENGTH={header_length}' if header_length else ''} "
        + " ".join(argv[:-1]).replace(str(REPO) + "/", "")
        + f" {url}",
    }


def onnxruntime_calls(url: str) -> tuple[float, float] | None:
    """(onnxruntime calls, rows) so far from an mlci server's /metrics; None for a server without them."""
    base = url.split("/v2/", 1)[0]
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("mlci_onnxruntime_batch_rows_count{", "mlci_onnxruntime_batch_rows_sum{")):
            values[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    if len(values) != 2:
        return None
    return values["mlci_onnxruntime_batch_rows_count"], values["mlci_onnxruntime_batch_rows_sum"]


# -- inputs ---------------------------------------------------------------------------------------------


def read_rows() -> tuple[list[str], list[list[float]], list[str]]:
    with (EXAMPLE / "data.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = [n for n in rows[0] if n != "target"]
    return names, [[float(r[n]) for n in names] for r in rows], [r["target"] for r in rows]


def v2_named(names: list[str], matrix: list[list[float]], extra: dict[str, Any] | None = None) -> bytes:
    inputs = [
        {"name": n, "datatype": "FP32", "shape": [len(matrix)], "data": [row[j] for row in matrix]}
        for j, n in enumerate(names)
    ]
    return json.dumps({"inputs": inputs, **(extra or {})}).encode()


def v2_binary(names: list[str], matrix: list[list[float]]) -> tuple[bytes, int]:
    columns = np.asarray(matrix, dtype="<f4").T
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [len(matrix), 1],
                    "parameters": {"binary_data_size": columns[j].nbytes},
                }
                for j, n in enumerate(names)
            ],
            "outputs": [
                {"name": "label", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": True}},
            ],
        }
    ).encode()
    return header + b"".join(np.ascontiguousarray(c).tobytes() for c in columns), len(header)


# -- artifacts and models -------------------------------------------------------------------------------


def build_artifact() -> Path:
    from mlci.config import load_config
    from mlci.pipeline import run_pipeline

    root = WORK / "example"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "mlci.toml", root / "mlci.toml")
    shutil.copy(EXAMPLE / "data.csv", root / "data.csv")
    return Path(run_pipeline(load_config(root / "mlci.toml")).artifact)


def build_mlserver_models(mlserver_python: Path, http_port: int) -> Path:
    """Two MLServer models fitted by scikit-learn in MLServer's venv: same estimator as the artifact.

    ``bc-named`` takes the same request as mlci (30 named FP32 inputs, content_type pd, ColumnTransformer
    by name); ``bc-matrix`` takes one [N, 30] FP64 tensor (MLServer's cheapest path), for a fair upper bound.
    """
    root = WORK / "mlserver"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    script = f"""
import csv, joblib, json, pathlib
import numpy as np, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
rows = list(csv.DictReader(open({str(EXAMPLE / "data.csv")!r})))
names = [n for n in rows[0] if n != "target"]
X = pd.DataFrame({{n: [float(r[n]) for r in rows] for n in names}})
y = [r["target"] for r in rows]
numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
named = Pipeline([("pre", ColumnTransformer([("numeric", numeric, names)])), ("model", LogisticRegression(C=1.0, max_iter=1000))]).fit(X, y)
matrix = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("model", LogisticRegression(C=1.0, max_iter=1000))]).fit(X.to_numpy(), y)
root = pathlib.Path({str(root)!r})
for name, est in (("bc-named", named), ("bc-matrix", matrix)):
    d = root / name; d.mkdir()
    joblib.dump(est, d / "model.joblib")
    (d / "model-settings.json").write_text(json.dumps({{"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {{"uri": "./model.joblib", "version": "v1"}}}}))
"""
    subprocess.run([str(mlserver_python), "-c", script], check=True)
    (root / "settings.json").write_text(
        json.dumps(
            {"http_port": http_port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False}
        )
    )
    return root


def in_process_rows_per_s(
    artifact: Path, matrix: list[list[float]], names: list[str], repeat: int = 300
) -> float:
    """onnxruntime on the same 1024-row batch, on the server core, same session options as the server."""
    from mlci.model.onnxio import open_session

    session = open_session(artifact / "model.onnx")
    feeds = {n: np.asarray([[row[j]] for row in matrix], dtype=np.float32) for j, n in enumerate(names)}
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CPU)})
    blocks = []
    try:
        for _ in range(20):
            session.run(None, feeds)
        for _ in range(7):  # median of 7 blocks: the machine is shared
            t0 = time.perf_counter()
            for _ in range(repeat // 7):
                session.run(None, feeds)
            blocks.append((time.perf_counter() - t0) / (repeat // 7))
    finally:
        os.sched_setaffinity(0, before)
    return len(matrix) / sorted(blocks)[len(blocks) // 2]


def server_graph_rows_per_s(artifact: Path, matrix: list[list[float]], repeat: int = 300) -> float:
    """The server's own rewritten graph (packed feature-major input, fused cast, class indices) in-process."""
    from mlci.serving.runtime import ModelRuntime

    runtime = ModelRuntime.load(artifact)
    packed = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32).T)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CPU)})
    blocks = []
    try:
        for _ in range(20):
            runtime.predict(packed, {})
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(repeat // 7):
                runtime.predict(packed, {})
            blocks.append((time.perf_counter() - t0) / (repeat // 7))
    finally:
        os.sched_setaffinity(0, before)
    return len(matrix) / sorted(blocks)[len(blocks) // 2]


def settle_log(log_dir: Path) -> None:
    """Before a logged batch run: drop the rotated segments (lines and blob files) and flush dirty pages, so
    every run starts from the same disk state instead of inheriting the previous runs' writeback (and
    their blob files to recycle: each run starts by writing new ones)."""
    for old in log_dir.glob("predictions-*.jsonl"):
        old.unlink(missing_ok=True)
        old.with_suffix(".bin").unlink(missing_ok=True)
    os.sync()


def last_record_bytes(log_dir: Path) -> tuple[int, int]:
    """(line bytes, blob-file bytes) of the newest complete record in the log (one batch record right after
    a batch run): what the server writes per request."""
    line = last_line(log_dir)
    if not line:
        return 0, 0
    blob = 0
    record = json.loads(line)
    arrays = [*record.get("outputs", {}).values(), record.get("numeric")]
    for packed in arrays:
        if isinstance(packed, dict) and "blob" in packed:
            nbytes = math.prod(packed["shape"]) * np.dtype(packed["dtype"]).itemsize
            blob += nbytes + (-nbytes) % 64  # each array padded to a 64-byte boundary
    return len(line), blob


def last_line(log_dir: Path) -> bytes:
    """The newest complete line in the log, newline included (b"" if none)."""
    files = [log_dir / "predictions.jsonl", *sorted(log_dir.glob("predictions-*.jsonl"), reverse=True)]
    for path in files:
        if not path.is_file():
            continue
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - (4 << 20)))
            lines = f.read().split(b"\n")
        complete = [line for line in lines[1:-1] if line]  # the first may be cut, the last is unterminated
        if complete:
            return complete[-1] + b"\n"
    return b""


# -- the run --------------------------------------------------------------------------------------------


def versions(mlserver_python: Path | None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "starlette",
        "uvicorn",
        "httptools",
        "uvloop",
        "orjson",
        "onnxruntime",
        "numpy",
        "prometheus-client",
    ):
        out[name] = metadata.version(name)
    if mlserver_python is not None:
        code = "from importlib import metadata as m; import json; print(json.dumps({n: m.version(n) for n in ('mlserver', 'mlserver-sklearn', 'scikit-learn', 'fastapi', 'uvicorn', 'uvloop', 'pandas')}))"
        found = json.loads(
            subprocess.run(
                [str(mlserver_python), "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        out.update({f"MLServer venv: {k}": v for k, v in found.items()})
    out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    out["cpu"] = f"{cpu}, {os.cpu_count()} cores, kernel {platform.release()}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs per configuration (the median is kept)"
    )
    parser.add_argument(
        "--mlserver", type=Path, default=REPO / "bench" / ".work" / "mlserver-venv", help="MLServer venv"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    d = args.duration
    names, matrix, _ = read_rows()
    single, batch = matrix[:1], (matrix * 2)[:BATCH]
    bodies = WORK / "bodies"
    bodies.mkdir(exist_ok=True)
    (bodies / "row.json").write_bytes(v2_named(names, single))
    (bodies / "batch.json").write_bytes(v2_named(names, batch))
    binary, binary_header = v2_binary(names, batch)
    (bodies / "batch.bin").write_bytes(binary)
    (bodies / "row-mlserver-named.json").write_bytes(
        v2_named(
            names,
            single,
            {
                "parameters": {"content_type": "pd"},
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            },
        )
    )
    (bodies / "row-mlserver-matrix.json").write_bytes(
        json.dumps(
            {"inputs": [{"name": "X", "datatype": "FP64", "shape": [1, 30], "data": single[0]}],
             "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
        ).encode()
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    rounds = args.rounds

    def measure(server_name: str, body_name: str, rows: int, c: int, run: Any) -> None:
        """``rounds`` runs of one configuration, interleaved with the others by the caller; keeps the median run."""
        key = (server_name, body_name, c)
        samples.setdefault(key, []).append(run())
        if len(samples[key]) == rounds:
            runs = sorted(samples[key], key=lambda r: r["rps"])
            r = dict(runs[len(runs) // 2])
            r.update(server=server_name, body=body_name, rows=rows, c=c, rows_per_s=r["rps"] * rows,
                     rps_all=[round(x["rps"]) for x in samples[key]],
                     cpu_us=sorted(x["cpu_us_per_request"] for x in samples[key])[len(runs) // 2])  # fmt: skip
            results.append(r)
            print(f"{server_name:<14} {body_name:<28} c={c:<3} {r['rps']:>9.0f} req/s (runs {r['rps_all']})  "
                  f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  errors {r['non2xx'] + r['socket_errors']}", flush=True)  # fmt: skip

    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    log_bytes = (0, 0)
    artifact = build_artifact()
    ports = {name: free_port() for name in ("mlci", "nolog", "floor")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    log_dir = WORK / "predictions"
    shutil.rmtree(log_dir, ignore_errors=True)
    mlci = [str(VENV_BIN / "mlci"), "serve", str(artifact)]
    path = "/v2/models/breast-cancer/infer"
    # All three run at once (idle ones cost next to nothing) so that their runs can be interleaved: the
    # machine is shared, and interleaving spreads slow spells over every configuration instead of one.
    with (
        server(
            [*mlci, "--port", str(ports["mlci"]), "--log-dir", str(log_dir)],
            f"{urls['mlci']}/v2/health/ready",
            env={"MLCI_SERVE_LOG_KEEP": "4"},  # 64 MiB segments: at most ~320 MiB of log on disk
        ),
        server([*mlci, "--port", str(ports["nolog"]), "--no-log"], f"{urls['nolog']}/v2/health/ready"),
        server(
            [sys.executable, str(REPO / "bench" / "floor_app.py"), str(ports["floor"])],
            f"{urls['floor']}/v2/health/ready",
        ),
    ):
        for _ in range(rounds):
            for c in (1, 8, 32):
                measure(
                    "mlci",
                    "1 row, 30 JSON inputs",
                    1,
                    c,
                    lambda c=c: wrk(urls["mlci"] + path, bodies / "row.json", c, d),
                )
                measure(
                    "mlci (no log)",
                    "1 row, 30 JSON inputs",
                    1,
                    c,
                    lambda c=c: wrk(urls["nolog"] + path, bodies / "row.json", c, d),
                )
                measure(
                    "floor",
                    "1 row, 30 JSON inputs",
                    1,
                    c,
                    lambda c=c: wrk(urls["floor"] + path, bodies / "row.json", c, d),
                )
            for name in ("mlci", "nolog"):
                label = "mlci" if name == "mlci" else "mlci (no log)"
                if name == "mlci":
                    settle_log(log_dir)
                measure(
                    label,
                    f"{BATCH} rows, JSON",
                    BATCH,
                    4,
                    lambda n=name: wrk(urls[n] + path, bodies / "batch.json", 4, d),
                )
                if name == "mlci":
                    settle_log(log_dir)
                measure(label, f"{BATCH} rows, binary tensors", BATCH, 4,
                        lambda n=name: wrk(urls[n] + path, bodies / "batch.bin", 4, d, binary_header))  # fmt: skip
                if name == "mlci":
                    log_bytes = last_record_bytes(log_dir)
            measure("floor", f"{BATCH} rows, binary tensors", BATCH, 4,
                    lambda: wrk(urls["floor"] + path, bodies / "batch.bin", 4, d, binary_header))  # fmt: skip
        # One long logged run: the log then writes for longer than the page cache absorbs, and the disk's
        # sustained write speed sets the pace (reported separately, not part of the interleaved rounds).
        settle_log(log_dir)
        sustained = wrk(urls["mlci"] + path, bodies / "batch.bin", 4, SUSTAINED_S, binary_header)
    in_process = in_process_rows_per_s(artifact, batch, names)
    server_graph = server_graph_rows_per_s(artifact, batch)
    disk = disk_write_mb_s(log_dir)
    page_cache = disk_write_mb_s(log_dir, 1024, sync=False)

    mlserver_python = args.mlserver / "bin" / "python"
    mlserver_note = ""
    if mlserver_python.exists():
        mport = free_port()
        models = build_mlserver_models(mlserver_python, mport)
        murl = f"http://127.0.0.1:{mport}"
        with server(
            [str(args.mlserver / "bin" / "mlserver"), "start", str(models)],
            f"{murl}/v2/models/bc-matrix/ready",
            cwd=models,
        ):
            for _ in range(rounds):
                for c in (1, 8, 32):
                    measure("MLServer", "1 row, 30 named inputs (pd)", 1, c,
                            lambda c=c: wrk(f"{murl}/v2/models/bc-named/infer", bodies / "row-mlserver-named.json", c, d))  # fmt: skip
                    measure("MLServer", "1 row, one [1,30] tensor", 1, c,
                            lambda c=c: wrk(f"{murl}/v2/models/bc-matrix/infer", bodies / "row-mlserver-matrix.json", c, d))  # fmt: skip
    else:
        mlserver_note = f"MLServer was not measured: no venv at {args.mlserver}."
    report = {
        "results": results,
        "in_process_rows_per_s": in_process,
        "server_graph_rows_per_s": server_graph,
        "log_line_bytes": log_bytes[0],
        "log_blob_bytes": log_bytes[1],
        "sustained": {**sustained, "seconds": SUSTAINED_S},
        "disk_write_mb_s": disk,
        "page_cache_write_mb_s": page_cache,
        "batch_body_bytes": len(binary),
        "rounds": rounds,
        "versions": versions(mlserver_python if mlserver_python.exists() else None),
    }
    (WORK / "results.json").write_text(json.dumps(report, indent=2))
    text = render(report, d, mlserver_note)
    print(text)
    if not args.no_write:
        write_section("serving", text)


def len_kib(report: dict[str, Any]) -> str:
    return f"{report.get('batch_body_bytes', 0) / 1024:,.0f}"


def render(report: dict[str, Any], duration: int, mlserver_note: str) -> str:
    results = report["results"]

    def pick(server_name: str, c: int, body_prefix: str = "1 row") -> dict[str, Any] | None:
        return next(
            (
                r
                for r in results
                if r["server"] == server_name and r["c"] == c and r["body"].startswith(body_prefix)
            ),
            None,
        )

    lines = [
        "## Serving: `mlci serve` vs MLServer vs the stack's floor (issue 3)",
        "",
        f"Command: `.venv/bin/python bench/bench_serving.py --duration {duration} --rounds {report['rounds']}` (servers pinned to core {SERVER_CPU}, "
        f"wrk to core {CLIENT_CPU}, one wrk thread, keep-alive, 127.0.0.1; each run is {duration} s of wrk).",
        "Model: the bundled breast-cancer example (30 numeric features, median imputer + StandardScaler + "
        "LogisticRegression): the mlci artifact for mlci, the same scikit-learn pipeline via joblib for MLServer.",
        "MLServer runs with its defaults (`mlserver start`, one parallel inference worker process, also pinned to core "
        f"{SERVER_CPU}); its venv has uvloop 0.21.0 because MLServer 1.7.1's worker crashes on uvloop 0.23 "
        "(`RuntimeError: There is no current event loop` in `mlserver/parallel/worker.py`).",
        "`mlci` runs with the prediction log on (the production setting; 64 MiB segments, the newest 4 kept and their blob files recycled) unless "
        "marked `no log`, and with dynamic batching on (its default: concurrent requests share onnxruntime calls; "
        "the rows-per-call column shows it). The floor is `bench/floor_app.py`: a starlette route on the same uvicorn+httptools+uvloop "
        "stack that reads the body and returns a constant V2 response, with the same process tuning (mallopt, gc.freeze).",
        "",
        f"Each configuration ran {report['rounds']} times, interleaved with the others; the table shows the median run "
        "(all runs' req/s in the last column).",
        "",
        "| server | request | c | req/s | rows/s | p50 ms | p99 ms | errors | server CPU µs/request | rows per onnxruntime call | req/s of each run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_call = "" if r.get("rows_per_call") is None else f"{r['rows_per_call']:.1f}"
        lines.append(
            f"| {r['server']} | {r['body']} | {r['c']} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['non2xx'] + r['socket_errors']} | {r['cpu_us']:.0f} | {per_call} | "
            f"{', '.join(f'{x:,}' for x in r['rps_all'])} |"
        )
    in_process = report["in_process_rows_per_s"]
    lines += [
        "",
        f"In-process onnxruntime on the same {BATCH}-row batch (one thread, core {SERVER_CPU}): the artifact's "
        f"`model.onnx` fed its 30 per-feature tensors, as a user would load it: **{in_process:,.0f} rows/s** "
        "(the baseline of the batch target). The server's own load-time rewrite of that graph (one feature-major "
        "input, one fused cast, class indices; bit-identical outputs), run in-process: "
        f"{report['server_graph_rows_per_s']:,.0f} rows/s.",
        "",
        "Against the targets:",
        "",
    ]
    mlci32 = pick("mlci", 32)
    mls = [r for r in (pick("MLServer", 32, "1 row, 30"), pick("MLServer", 32, "1 row, one")) if r]
    if mlci32 and mls:
        best = max(mls, key=lambda r: r["rps"])
        best_p99 = min(r["p99_ms"] for r in mls)
        ratio = mlci32["rps"] / best["rps"]
        p99 = mlci32["p99_ms"] / best_p99
        lines.append(
            f"- Throughput at c=32 vs MLServer's faster variant ({best['body']}): {ratio:.1f}× "
            f"(target ≥ 5×: {'met' if ratio >= 5 else 'NOT met'})."
        )
        lines.append(
            f"- p99 at c=32: {mlci32['p99_ms']:.2f} ms vs MLServer's best {best_p99:.2f} ms = {p99:.2f} "
            f"(target ≤ 0.33: {'met' if p99 <= 1 / 3 else 'NOT met'})."
        )
    elif mlserver_note:
        lines.append(f"- {mlserver_note}")

    def batch(server_name: str, body: str) -> dict[str, Any] | None:
        return next(
            (
                x
                for x in results
                if x["server"] == server_name and x["body"].endswith(body) and x["rows"] == BATCH
            ),
            None,
        )

    for body in ("binary tensors", "JSON"):
        on, off = batch("mlci", body), batch("mlci (no log)", body)
        if on and off:
            share_on, share_off = on["rows_per_s"] / in_process, off["rows_per_s"] / in_process
            lines.append(
                f"- {BATCH}-row batch over HTTP ({body}): {on['rows_per_s']:,.0f} rows/s with the log on = "
                f"{share_on:.0%} of in-process, {off['rows_per_s']:,.0f} rows/s with it off = {share_off:.0%} "
                f"(target ≥ 50%: {'met' if share_on >= 0.5 else 'NOT met'} with the log on, "
                f"{'met' if share_off >= 0.5 else 'NOT met'} with it off)."
            )
    floor_batch, on_bin = batch("floor", "binary tensors"), batch("mlci", "binary tensors")
    off_bin = batch("mlci (no log)", "binary tensors")
    if floor_batch and on_bin and off_bin:
        lines.append(
            f"- Where a binary batch's server CPU goes: the stack alone (the floor app reading the same "
            f"{len_kib(report)} KiB body) {floor_batch['cpu_us']:.0f} µs per request; mlci {off_bin['cpu_us']:.0f} µs "
            f"with the log off, {on_bin['cpu_us']:.0f} µs with it on; onnxruntime's part "
            f"{BATCH / report['server_graph_rows_per_s'] * 1e6:.0f} µs (the server's graph in-process; "
            f"{BATCH / in_process * 1e6:.0f} µs for the artifact's)."
        )
    sustained = report["sustained"]
    if on_bin and report["log_line_bytes"]:
        record = report["log_line_bytes"] + report.get("log_blob_bytes", 0)
        line_mb = record / 1e6
        lines.append(
            f"- The log over time: each {BATCH}-row request logs {record / 1024:,.0f} KiB (a "
            f"{report['log_line_bytes'] / 1024:,.1f} KiB line and {report.get('log_blob_bytes', 0) / 1024:,.0f} KiB of raw "
            f"float32 inputs and probabilities in the segment's blob file), so {on_bin['rps']:,.0f} req/s write "
            f"{on_bin['rps'] * line_mb:,.0f} MB/s; this machine writes {report['disk_write_mb_s']:,.0f} MB/s to its disk "
            f"(dd, fdatasync) and {report['page_cache_write_mb_s']:,.0f} MB/s into the page cache (dd, a new file, no sync). "
            f"Each interleaved run starts with the page cache flushed and no blob file to recycle; one {sustained['seconds']} s run "
            f"instead gave {sustained['rps'] * BATCH:,.0f} rows/s = {sustained['rps'] * BATCH / in_process:.0%} of "
            f"in-process ({sustained['rps'] * line_mb:,.0f} MB/s of log, {sustained['cpu_us_per_request']:.0f} µs CPU/request)."
        )
    for c in (1, 8, 32):
        m, n, f = pick("mlci", c), pick("mlci (no log)", c), pick("floor", c)
        if m and n and f:
            share = m["rps"] / f["rps"]
            lines.append(
                f"- Single row at c={c}: mlci {m['rps']:,.0f} req/s = {share:.0%} of the floor's {f['rps']:,.0f} "
                f"({n['rps'] / f['rps']:.0%} with the log off)"
                + (f" (target ≥ 40%, log on: {'met' if share >= 0.4 else 'NOT met'})." if c == 32 else ".")
            )
    m32, n32, f32 = pick("mlci", 32), pick("mlci (no log)", 32), pick("floor", 32)
    if m32 and n32 and f32:
        lines.append(
            f"- The same at c=32 by server CPU time per request, which other load on the shared machine disturbs "
            f"less than req/s: floor {f32['cpu_us']:.0f} µs, mlci {m32['cpu_us']:.0f} µs (log on) / {n32['cpu_us']:.0f} µs "
            f"(log off), i.e. mlci can reach {f32['cpu_us'] / m32['cpu_us']:.0%} / {f32['cpu_us'] / n32['cpu_us']:.0%} of "
            "the floor's throughput on a core of its own."
        )
    mls32 = [r for r in (pick("MLServer", 32, "1 row, 30"), pick("MLServer", 32, "1 row, one")) if r]
    if m32 and mls32:
        cheapest = min(mls32, key=lambda r: r["cpu_us"])
        lines.append(
            f"- Server CPU per request at c=32: MLServer ({cheapest['body']}) {cheapest['cpu_us']:.0f} µs vs mlci "
            f"{m32['cpu_us']:.0f} µs = {cheapest['cpu_us'] / m32['cpu_us']:.1f}×."
        )
    lines += [
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "Exact wrk commands:",
        "",
    ]
    lines += [f"- {r['server']}, {r['body']}, c={r['c']}: `{r['command']}`" for r in results]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
