"""Benchmark `mlci run` on the bundled example: cold, warm (all cached), peak memory, and `mlci --help`.

Baselines measured in the same run on the same machine:
- `python -c pass`: interpreter start-up, the floor under any CLI;
- a hand-written script that fits the same scikit-learn pipeline and converts it with skl2onnx: what
  the work costs without mlci (no parity, evaluation, profile, outlier model or artifact).
Usage: .venv/bin/python bench/bench_pipeline.py [--repeat N]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import run_timed, summarise, write_section

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "breast_cancer"
BIN = Path(sys.executable).parent
TARGETS = {"cold_model_stages_s": 20.0, "cold_full_s": 30.0, "warm_s": 1.5, "help_s": 0.3}

HAND_WRITTEN = """
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression
from skl2onnx import to_onnx
df = pd.read_csv("data.csv")
X, y = df.drop(columns=["target"]).astype("float32"), df["target"]
model = Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=1000))]).fit(X, y)
open("/dev/null", "wb").write(to_onnx(model, X[:1]).SerializeToString())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mlci = str(BIN / "mlci")
    python = sys.executable
    cold, full, warm, help_, floor, hand = [], [], [], [], [], []
    peak_kib = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "example"
            shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".mlci"))
            seconds, peak = run_timed([mlci, "run", "--until", "evaluate"], cwd=project)
            cold.append(seconds)
            peak_kib = max(peak_kib, peak)
            shutil.rmtree(project / ".mlci")
            full.append(run_timed([mlci, "run"], cwd=project)[0])
            warm.append(run_timed([mlci, "run"], cwd=project)[0])
            hand.append(run_timed([python, "-c", HAND_WRITTEN], cwd=project)[0])
        help_.append(run_timed([mlci, "--help"])[0])
        floor.append(run_timed([python, "-c", "pass"])[0])

    rows = {
        "cold_model_stages_s": summarise(cold),
        "cold_full_s": summarise(full),
        "warm_s": summarise(warm),
        "help_s": summarise(help_),
        "python_startup_s": summarise(floor),
        "hand_written_fit_convert_s": summarise(hand),
    }
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("scikit-learn", "skl2onnx", "onnxruntime", "numpy"))
    lines = [
        "## `mlci run` on the bundled example (issues 2 and 4)",
        "",
        "cold_model_stages_s: `mlci run --until evaluate` on an empty workspace (train, export, evaluate).  ",
        "cold_full_s: `mlci run` on an empty workspace: also smoke (a real server process), gate and push to the OCI layout.  ",
        "warm_s: `mlci run` again with nothing changed (every stage a cache hit; push is idempotent).",
        "",
        f"Command: `{Path(sys.executable).relative_to(REPO) if sys.executable.startswith(str(REPO)) else sys.executable} bench/bench_pipeline.py --repeat {args.repeat}`  ",
        f"Machine: {platform.machine()}, {shutil.os.cpu_count()} cores, Python {platform.python_version()}; {versions}.",
        "",
        "| measurement | median s | min s | max s | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("pass" if s["median"] <= target else "FAIL")
        lines.append(
            f"| {name} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {'≤ ' + str(target) if target else 'baseline'} | {verdict} |"
        )
    lines += [
        "",
        f"Peak RSS of a cold `mlci run --until evaluate`: {peak_kib / 1024:.0f} MiB." if peak_kib > 0 else "Peak RSS: not attributable in this run.",
        f"Ratios in this run: cold model stages / hand-written fit+convert = {rows['cold_model_stages_s']['median'] / rows['hand_written_fit_convert_s']['median']:.2f}× "
        "(mlci also checks parity, evaluates with onnxruntime, measures latency, builds the profile and the outlier model); "
        f"warm run / python start-up = {rows['warm_s']['median'] / rows['python_startup_s']['median']:.2f}×; "
        f"`--help` / python start-up = {rows['help_s']['median'] / rows['python_startup_s']['median']:.2f}×.",
    ]
    write_section("pipeline", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
