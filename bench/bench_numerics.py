"""The price of portable numerics (issue 14, item 5): `mlci train` wall time, portable vs native, as ratios.

Three projects, each trained in a fresh process (numerics are fixed when numpy loads) alternately with
``[reproducibility] numerics = "portable"`` and ``"native"``, in one run: the bundled example
(LogisticRegression, 569 rows), and 100,000 rows × 20 numeric features with LogisticRegression and with
RandomForestClassifier. Median of --repeat runs each; the ratio is portable / native.
Usage: .venv/bin/python bench/bench_numerics.py [--repeat 3] [--write]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import run_timed, write_section

REPO = Path(__file__).resolve().parents[1]
ROWS, FEATURES = 100_000, 20
TOML = """
[model]
name = "bench-numerics"
task = "classification"
[data]
path = "data.csv"
target = "y"
[estimator]
{estimator}
"""
ESTIMATORS = {
    "logistic_100k": 'class = "sklearn.linear_model.LogisticRegression"\nparams = { max_iter = 300 }',
    "random_forest_100k": 'class = "sklearn.ensemble.RandomForestClassifier"\nparams = { n_estimators = 30, max_depth = 10 }',
}


def _projects(root: Path) -> dict[str, Path]:
    """The bundled example and the two 100k-row projects, one directory each (mlci.toml gets the mode later)."""
    out = {}
    example = root / "breast_cancer"
    shutil.copytree(REPO / "examples" / "breast_cancer", example, ignore=shutil.ignore_patterns(".mlci"))
    out["breast_cancer"] = example
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, FEATURES))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(FEATURES)])
    frame["y"] = np.where(X[:, :5].sum(axis=1) + rng.normal(0, 1, ROWS) > 0, "yes", "no")
    for name, estimator in ESTIMATORS.items():
        path = root / name
        path.mkdir()
        frame.to_csv(path / "data.csv", index=False)
        (path / "mlci.toml").write_text(TOML.format(estimator=estimator))
        out[name] = path
    return out


def _train(project: Path, mode: str, out: Path) -> float:
    """One `mlci train` under ``mode``; wall seconds."""
    toml = project / "mlci.toml"
    text = toml.read_text().split("\n[reproducibility]")[0]
    toml.write_text(text + f'\n[reproducibility]\nnumerics = "{mode}"\n')
    seconds, _ = run_timed([sys.executable, "-m", "mlci", "train", "--config", str(toml), "--out", str(out)], cwd=project)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the section into bench/RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlci-bench-numerics-") as tmp:
        for name, project in _projects(Path(tmp)).items():
            times: dict[str, list[float]] = {"portable": [], "native": []}
            for i in range(args.repeat):
                for mode in ("native", "portable"):  # alternated: drift in the machine's load hits both
                    times[mode].append(_train(project, mode, Path(tmp) / f"out-{name}-{mode}-{i}"))
            native, portable = statistics.median(times["native"]), statistics.median(times["portable"])
            rows.append(f"| {name} | {native:.2f} | {portable:.2f} | {portable / native:.2f}× |")
            print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## Portable vs native numerics: `mlci train` (issue 14, `bench/bench_numerics.py`)",
            "",
            f"Median of {args.repeat} fresh `mlci train` processes per cell (import and data loading included), "
            f"modes alternated, one run; {platform.machine()}, 2 cores. Portable: OpenBLAS Nehalem kernel, numpy "
            "at X86_V2, one BLAS/OpenMP thread, glibc's FMA libm code masked, and the restart `mlci` makes to take "
            "that mask (started, as from a shell, without any of the variables); native: the machine's own (here "
            "SkylakeX, AVX512_ICL, 2 threads, FMA libm).",
            "",
            "| project | native s | portable s | portable / native |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section("numerics", body)


if __name__ == "__main__":
    main()
