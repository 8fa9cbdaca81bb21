"""Where the artifact's bits depend on the CPU: `mlci run --until evaluate` under simulated CPUs.

A simulated CPU is an OpenBLAS kernel (``OPENBLAS_CORETYPE``: the kernel OpenBLAS would pick on that CPU
family), a numpy SIMD dispatch level (``NPY_DISABLE_CPU_FEATURES``: the dispatch targets a CPU of that
level lacks) and a BLAS/OpenMP thread count (a machine's cores). Each combination runs every project in a
fresh process (the variables are read when numpy and OpenBLAS load), on a fresh workspace, and its
artifact is compared with the reference run's (no variable set): the files and the manifest fields
that differ are listed.

The combinations are a covering design, not the full product: every kernel and every dispatch level at
least once, 1 and 2 threads on two of them. Projects: the bundled example and the test matrix's five
estimators on the mixed-type CSV (tests/test_pipeline.py CASES, tests/conftest.py mixed_frame).

Usage: .venv/bin/python bench/numerics_matrix.py [--numerics none|portable|native] [--write]
``none`` (default) leaves mlci.toml without a [reproducibility] table (what code before that table
accepts); ``--write`` puts the table into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _util import write_section  # noqa: E402

from tests.conftest import BASE_TOML, mixed_frame  # noqa: E402
from tests.simulated_cpus import DISPATCH, KERNELS  # noqa: E402  the simulated CPUs the tests use
from tests.simulated_cpus import json_leaves as _leaves  # noqa: E402
from tests.test_pipeline import CASES, SCALED  # noqa: E402

VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
ARTIFACT_FILES = ("model.onnx", "outlier.onnx", "profile.json")


def combinations() -> list[tuple[str | None, str, int | None]]:
    """(kernel, dispatch level, threads): the reference first, then each kernel with a dispatch level in turn."""
    levels = list(DISPATCH)
    combos: list[tuple[str | None, str, int | None]] = [(None, "AVX512_ICL", None)]
    combos += [(kernel, levels[i % len(levels)], 1) for i, kernel in enumerate(KERNELS)]
    combos += [("Haswell", "AVX512_ICL", 2), ("SkylakeX", "X86_V2", 2)]
    return combos


def environment(kernel: str | None, level: str, threads: int | None) -> dict[str, str]:
    """The child's environment for one simulated CPU (none of the numerics variables inherited)."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if kernel:
        env["OPENBLAS_CORETYPE"] = kernel
    if DISPATCH[level]:
        env["NPY_DISABLE_CPU_FEATURES"] = DISPATCH[level]
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


def projects(root: Path, numerics: str) -> dict[str, Path]:
    """The bundled example and the five test-matrix estimators on the mixed CSV, as directories under root."""
    table = f'\n[reproducibility]\nnumerics = "{numerics}"\n' if numerics != "none" else ""
    out: dict[str, Path] = {}
    example = root / "breast_cancer"
    shutil.copytree(REPO / "examples" / "breast_cancer", example, ignore=shutil.ignore_patterns(".mlci"))
    if not (example / "data.csv").is_file():
        subprocess.run([sys.executable, "prepare.py"], cwd=example, check=True)
    (example / "mlci.toml").write_text((example / "mlci.toml").read_text() + table)
    out["breast_cancer"] = example
    frame = mixed_frame()
    for case, (task, target, estimator) in sorted(CASES.items()):
        path = root / case
        path.mkdir()
        frame.to_csv(path / "data.csv", index=False)
        drop = 'drop = ["spend"]' if target == "churn" else 'drop = ["churn"]'
        text = BASE_TOML.format(name="demo", task=task, target=target, estimator=estimator + "\n" + SCALED, data_extra=drop)
        (path / "mlci.toml").write_text(text + table)
        out[case] = path
    return out


def run_one(project: Path, workspace: Path, env: dict[str, str]) -> dict[str, Any]:
    """`mlci run --until evaluate` in a fresh process; the artifact's manifest and file hashes (or the error)."""
    done = subprocess.run(
        [sys.executable, "-m", "mlci", "run", "--until", "evaluate", "--json", "--no-cache",
         "--config", str(project / "mlci.toml"), "--workspace", str(workspace)],
        env=env, cwd=project, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:160]}
    artifact = Path(json.loads(done.stdout)["artifact"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {"manifest": manifest}


def differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The artifact files and hashed manifest fields in which ``other`` differs from ``reference``."""
    if "error" in other or "error" in reference:
        return [f"error: {other.get('error') or reference.get('error')}"]
    ref, got = reference["manifest"], other["manifest"]
    files = [name for name in ARTIFACT_FILES if ref["files"][name]["sha256"] != got["files"][name]["sha256"]]
    skip = ("digest", "runtime", "files")
    a = _leaves({k: v for k, v in ref.items() if k not in skip})
    b = _leaves({k: v for k, v in got.items() if k not in skip})
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith("numerics."))
    return files + _collapse(fields)


def _collapse(fields: list[str]) -> list[str]:
    """metrics.per_class.0.precision, metrics.per_class.1.recall … → metrics.per_class.* (a short table)."""
    out: list[str] = []
    for name in fields:
        parts = name.split(".")
        short = ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        if short not in out:
            out.append(short)
    return out


def blas_kernel(result: dict[str, Any]) -> str:
    """The kernel OpenBLAS reported (the manifest's numerics record, when the code writes one)."""
    numerics = result.get("manifest", {}).get("numerics", {})
    blas = numerics.get("blas") or []
    return ",".join(sorted({b.get("kernel", "?") for b in blas})) if blas else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numerics", choices=("none", "portable", "native"), default="none")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    rows: list[str] = []
    digests: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="mlci-numerics-") as tmp:
        root = Path(tmp)
        names = projects(root, args.numerics)
        reference: dict[str, dict[str, Any]] = {}
        for i, (kernel, level, threads) in enumerate(combinations()):
            env = environment(kernel, level, threads)
            cells: list[str] = []
            kernels: set[str] = set()
            with ThreadPoolExecutor(2) as pool:  # two children at a time: the numerics are per process
                results = dict(zip(names, pool.map(lambda n, i=i, env=env: run_one(names[n], root / f"ws-{i}-{n}", env), names), strict=True))
            for name, result in results.items():
                reference.setdefault(name, result)
                digest = result.get("manifest", {}).get("digest", "error")
                digests.setdefault(name, set()).add(digest)
                kernels.add(blas_kernel(result))
                diff = differences(reference[name], result)
                cells.append(f"`{digest[7:15]}` " + (", ".join(diff) if diff else "="))
            label = f"{kernel or '(auto)'} / {level} / {threads or 'auto'}"
            rows.append(f"| {label} | {','.join(sorted(kernels))} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    head = "| OPENBLAS_CORETYPE / numpy dispatch / threads | BLAS kernel in manifest | " + " | ".join(names) + " |"
    rule = "|" + "---|" * (len(names) + 2)
    summary = "distinct digests: " + ", ".join(f"{n} {len(d)}" for n, d in digests.items())
    table = "\n".join([head, rule, *rows, "", summary])
    print(summary)
    if args.write:
        write_section(
            f"numerics-matrix-{args.numerics}",
            f"### Simulated CPUs, `numerics = {args.numerics}` (`bench/numerics_matrix.py --numerics {args.numerics}`)\n\n"
            "Each cell: the digest's first 8 hex digits, then what differs from the first row's artifact "
            "(`=`: nothing).\n\n" + table,
        )


if __name__ == "__main__":
    main()
