"""Benchmark one `mlci monitor` cycle over 100k logged rows × 30 features, and its peak memory.

The log is written in the server's format (serving/predlog.py: the numeric features as one packed
float32 feature-major matrix per record, numeric outputs packed, labels as lists) for the bundled
breast-cancer artifact: rows resampled from the example data with a little noise, outputs from the real
model.onnx. Each measurement runs in a fresh child process, which reports its own wall time (after
imports) and peak RSS.

Baseline measured in the same run on the same lines: reading every log file and parsing each line with
the standard ``json`` module, nothing else: the floor of any monitor that reads this log.

Usage: .venv/bin/python bench/bench_monitor.py [--rows 100000] [--batch 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import write_section

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "breast_cancer"


def make_log(work: Path, rows: int, batch: int) -> Path:
    """Train the example (up to evaluate) and write ``rows`` rows of log; returns the artifact."""
    import numpy as np
    import orjson
    import pandas as pd

    from mlci.config import load_config
    from mlci.model.onnxio import open_session
    from mlci.pipeline import run_pipeline
    from mlci.serving.predlog import pack_array

    shutil.copy(EXAMPLE / "mlci.toml", work / "mlci.toml")
    shutil.copy(EXAMPLE / "data.csv", work / "data.csv")
    artifact = Path(run_pipeline(load_config(work / "mlci.toml"), until="evaluate").artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    features = manifest["schema"]["features"]
    assert all(f["kind"] == "numeric" for f in features), (
        "the example is all numeric; categories would need strings"
    )
    names = [f["name"] for f in features]
    data = pd.read_csv(work / "data.csv")[names].to_numpy(np.float64)
    rng = np.random.default_rng(0)
    X = data[rng.integers(0, len(data), rows)] * rng.normal(1.0, 0.02, (rows, len(names)))
    X = X.astype(np.float32)
    session = open_session(artifact / "model.onnx")
    outputs = [o.name for o in session.get_outputs()]
    results = session.run(None, {n: X[:, [i]] for i, n in enumerate(names)})
    XT = np.ascontiguousarray(X.T)  # the server holds (and logs) the numeric inputs feature-major
    log_dir = work / "log"
    log_dir.mkdir()
    # As PredictionLog.append writes a record: the numeric matrix and numeric outputs packed, strings as lists.
    with (log_dir / "predictions.jsonl").open("wb") as f:
        for k, lo in enumerate(range(0, rows, batch)):
            hi = min(lo + batch, rows)
            f.write(orjson.dumps({
                "id": f"bench-{k}", "ts": 1767225600.0 + k, "model": manifest["name"], "digest": manifest["digest"],
                "rows": hi - lo, "numeric": pack_array(XT[:, lo:hi]), "inputs": {},
                "outputs": {name: pack_array(r[lo:hi]) if r.dtype.kind in "fiub" else r[lo:hi].tolist()
                            for name, r in zip(outputs, results, strict=True)},
            }) + b"\n")  # fmt: skip
    return artifact


def _vm(key: str) -> int:
    """A /proc/self/status figure in KiB (VmHWM: peak resident set; VmRSS: current)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(key + ":")))


def child(mode: str, artifact: Path, log_dir: Path, state: Path) -> None:
    """Run one measurement in this process and print {seconds, peak_kib} as JSON."""
    t0 = time.perf_counter()
    if mode == "baseline":
        count = 0
        for path in [*sorted(log_dir.glob("predictions-*.jsonl")), log_dir / "predictions.jsonl"]:
            with path.open("rb") as f:
                for line in f:
                    json.loads(line)
                    count += 1
        extra: dict[str, object] = {"lines": count}
    else:
        from mlci.monitor.service import Monitor
        from mlci.monitor.settings import Settings

        service = Monitor(artifact, log_dir, state, settings=Settings())
        loaded = _vm("VmRSS")
        report = service.cycle()
        extra = {"rows": report["rows"], "windows": len(report["windows"]), "status": report["status"],
                 "loaded_kib": loaded, "cycle_s": report["duration_s"]}  # fmt: skip
    seconds = time.perf_counter() - t0
    # VmHWM, not getrusage: ru_maxrss survives execve, so a child would report its parent's peak.
    peak = _vm("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_kib": peak, **extra}))


def measure(mode: str, artifact: Path, log_dir: Path, state: Path) -> dict[str, float]:
    if state.exists():
        shutil.rmtree(state)
    argv = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--artifact",
        str(artifact),
        "--log-dir",
        str(log_dir),
        "--state",
        str(state),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1, help="rows per logged request")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["baseline", "monitor"])
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--state", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.artifact, args.log_dir, args.state)
        return
    with tempfile.TemporaryDirectory(prefix="mlci-bench-monitor-") as tmp:
        work = Path(tmp)
        artifact = make_log(work, args.rows, args.batch)
        size = (work / "log" / "predictions.jsonl").stat().st_size
        runs = {"baseline": [], "monitor": []}  # type: dict[str, list[dict[str, float]]]
        for _ in range(args.repeat):
            for mode in runs:
                runs[mode].append(measure(mode, artifact, work / "log", work / "state"))
    base = statistics.median(r["seconds"] for r in runs["baseline"])
    mon = statistics.median(r["seconds"] for r in runs["monitor"])
    cycle = statistics.median(r["cycle_s"] for r in runs["monitor"])
    peak_mon = max(r["peak_kib"] for r in runs["monitor"]) / 1024
    peak_base = max(r["peak_kib"] for r in runs["baseline"]) / 1024
    loaded = statistics.median(r["loaded_kib"] for r in runs["monitor"]) / 1024
    last = runs["monitor"][-1]
    versions = "; ".join(f"{p} {metadata.version(p)}" for p in ("numpy", "scipy", "onnxruntime", "orjson"))
    body = f"""## Monitor (`bench/bench_monitor.py`)

One `Monitor.cycle()` over a prediction log of {args.rows:,} rows × 30 features ({args.batch} row(s) per logged
request, {size / 2**20:.0f} MiB, one file), default settings (windows of 5,000 rows → {last["windows"]} windows, each with
{2 * 30 + 2} drift tests, the outlier model on every row, the policy, report and metrics files). Median of {args.repeat} runs,
each in a fresh process; peak is that process's max RSS (VmHWM). Records in the packed format: the numeric
inputs and probabilities as base64 arrays, which the baseline's `json.loads` leaves as strings.

| measurement | seconds | peak RSS |
|---|---|---|
| baseline: read the files, `json.loads` every line, nothing else | {base:.2f} | {peak_base:.0f} MiB |
| `mlci monitor` cycle (read, parse, window, test, score, report) | {cycle:.2f} | {peak_mon:.0f} MiB |
| the same, plus imports and loading/verifying the artifact | {mon:.2f} | |
| of which: libraries imported and artifact loaded, before the cycle | | {loaded:.0f} MiB |

The cycle takes {cycle / base:.1f}× the bare JSON parse of the same lines ({args.rows / cycle:,.0f} rows/s).

Command: `.venv/bin/python bench/bench_monitor.py --rows {args.rows} --batch {args.batch} --repeat {args.repeat}`.
Versions: python {platform.python_version()}; {versions}; cpu {platform.machine()}.
"""
    write_section("monitor", body)
    print(body)


if __name__ == "__main__":
    main()
