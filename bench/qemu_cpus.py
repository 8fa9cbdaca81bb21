"""Real CPUs, emulated: `mlci run --until evaluate` under `qemu-x86_64 -cpu MODEL` versus natively.

bench/numerics_matrix.py simulates CPUs with environment variables (OpenBLAS kernel, numpy dispatch,
threads). What those cannot simulate is a library that reads CPUID itself: onnxruntime's MLAS kernels,
glibc's libm (``exp``/``log`` have FMA variants chosen by ifunc). qemu-user's TCG reports the CPUID of the
model it is given to every library in the process at once, so the whole process dispatches as it would on
that CPU (QEMU 7.2 emulates up to AVX2: no AVX-512 model is reachable, and the host has AVX-512). Each
CPU runs each project in a fresh process on a fresh workspace; the artifact is compared with the native
run's: the digest, the artifact files that differ, the hashed manifest fields that differ, and
profile.json key by key (with the largest absolute difference of each differing key).

Control (``--tunables``): the native run again with ``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA``, which
hides those features from glibc's ifunc selection only (not from numpy, OpenBLAS or onnxruntime, which
read CPUID themselves): when its digest is a qemu CPU's, the difference is glibc's, not qemu's.

Usage: .venv/bin/python bench/qemu_cpus.py [--numerics portable|native] [--cpus Nehalem,Haswell]
[--matrix] [--tunables] [--write]. ``--matrix`` adds the test-matrix projects (bench/numerics_matrix.py
``projects()``); ``--write`` puts the table into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _util import write_section  # noqa: E402
from numerics_matrix import VARIABLES, _leaves, projects  # noqa: E402

QEMU = "qemu-x86_64"
# One model per SIMD level qemu 7.2's TCG reaches (Skylake-Server's AVX-512 is dropped by TCG), and an AMD one.
CPUS = ("Nehalem", "SandyBridge", "Haswell", "Skylake-Server", "EPYC-Rome")
ARTIFACT_FILES = ("model.onnx", "outlier.onnx", "profile.json")
TUNABLES = "glibc.cpu.hwcaps=-AVX2,-FMA"
MEASURED = ("evidence", "evidence_digest", "digest", "runtime", "files", "numerics")


def command(cpu: str | None, project: Path, workspace: Path) -> list[str]:
    """The argv of one run: `mlci run --until evaluate`, under qemu when ``cpu`` is a model name (qemu-user
    follows the venv's python symlink, and python finds the venv by its pyvenv.cfg as natively)."""
    mlci = [sys.executable, "-m", "mlci", "run", "--until", "evaluate", "--json", "--no-cache",
            "--config", str(project / "mlci.toml"), "--workspace", str(workspace)]  # fmt: skip
    return ([QEMU, "-cpu", cpu] if cpu else []) + mlci


# Set by main: whether the runs start with portable numerics' environment already in force.
START_PORTABLE = False


def environment(tunables: bool = False) -> dict[str, str]:
    """The child's environment: none of the numerics variables inherited; with ``numerics = "portable"``
    it starts with portable numerics' own (GLIBC_TUNABLES included), so `mlci` has no reason to restart
    itself, which under qemu would escape the emulation (qemu-user does not follow execve)."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES and k != "GLIBC_TUNABLES"}
    if START_PORTABLE:
        from mlci.numerics import glibc_tunables, portable_environment

        env |= {k: v for k, v in portable_environment().items() if v is not None}
        env["GLIBC_TUNABLES"] = glibc_tunables(None)
    if tunables:
        env["GLIBC_TUNABLES"] = TUNABLES
    return env


def run_one(cpu: str | None, project: Path, workspace: Path, tunables: bool = False) -> dict[str, Any]:
    """One run; the artifact's manifest, its files' bytes' hashes and profile.json (or the error)."""
    t0 = time.perf_counter()
    done = subprocess.run(command(cpu, project, workspace), env=environment(tunables), cwd=project,
                          capture_output=True, text=True, check=False, timeout=1800)  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "TCG doesn't support" not in line]
        return {"error": (lines or [f"exit {done.returncode}"])[-1][:160], "seconds": seconds}
    artifact = Path(json.loads(done.stdout)["artifact"])
    return {
        "manifest": json.loads((artifact / "manifest.json").read_text()),
        "profile": json.loads((artifact / "profile.json").read_text()),
        "hashes": {
            name: hashlib.sha256((artifact / name).read_bytes()).hexdigest() for name in ARTIFACT_FILES
        },
        "seconds": seconds,
    }


def _magnitude(a: Any, b: Any) -> str:
    """How far two leaves are apart: |a - b| for numbers, else both values."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return f"{abs(a - b):.2g}"
    return f"{a!r}→{b!r}"


def profile_differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """profile.json key by key: {collapsed key: (how many leaves differ, the largest numeric difference)}."""
    a, b = _leaves(reference), _leaves(other)
    out: dict[str, tuple[int, float | None, str]] = {}
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        short = ".".join(p if not p.isdigit() else "*" for p in key.split("."))
        count, biggest, text = out.get(short, (0, None, ""))
        x, y = a.get(key), b.get(key)
        size = abs(x - y) if isinstance(x, int | float) and isinstance(y, int | float) else None
        if size is not None and (biggest is None or size > biggest):
            biggest, text = size, _magnitude(x, y)
        elif biggest is None:
            text = _magnitude(x, y)
        out[short] = (count + 1, biggest, text)
    return {k: (n, text) for k, (n, _, text) in out.items()}


def differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What differs from the reference run: artifact files, hashed manifest fields, profile.json keys."""
    if "error" in other or "error" in reference:
        return [f"error: {other.get('error') or reference.get('error')}"]
    files = [name for name in ARTIFACT_FILES if reference["hashes"][name] != other["hashes"][name]]
    a = _leaves({k: v for k, v in reference["manifest"].items() if k not in MEASURED})
    b = _leaves({k: v for k, v in other["manifest"].items() if k not in MEASURED})
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    numerics = (
        ["numerics"] if reference["manifest"].get("numerics") != other["manifest"].get("numerics") else []
    )
    evidence = _evidence_differences(reference["manifest"], other["manifest"])
    profile = [
        f"profile.{k} ({n}× max {m})"
        for k, (n, m) in profile_differences(reference["profile"], other["profile"]).items()
    ]
    return files + fields + numerics + evidence + profile


def _evidence_differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Measured evidence that differs, latency left out (it always does, and qemu is ~10× slower)."""
    a = _leaves(reference.get("evidence", {}), "evidence.")
    b = _leaves(other.get("evidence", {}), "evidence.")
    keys = sorted(
        k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and "latency" not in k and "identity" not in k
    )
    return [f"{k} ({_magnitude(a.get(k), b.get(k))})" for k in keys]


# Run in the child (natively or under qemu): what each library dispatched to, and hashes of the bits it
# computes (onnxruntime's MatMul/Sigmoid with mlci's session settings; glibc's exp through ctypes, which
# numpy's X86_V2 baseline leaves to libm). One JSON line.
PROBE = r"""
import ctypes, hashlib, json
import numpy as np, onnxruntime as ort, scipy.linalg, sklearn.utils._openmp_helpers
from onnx import TensorProto, helper, numpy_helper
from numpy._core._multiarray_umath import __cpu_features__ as f
from threadpoolctl import threadpool_info
rng = np.random.default_rng(0)
w, x = rng.standard_normal((256, 64)).astype(np.float32), rng.standard_normal((128, 256)).astype(np.float32)
out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "s")]
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sigmoid", ["m"], ["s"])],
    "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])], out, [numpy_helper.from_array(w, "w")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]); model.ir_version = 8
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
m, s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})
exp = ctypes.CDLL("libm.so.6").exp; exp.restype, exp.argtypes = ctypes.c_double, [ctypes.c_double]
libm = np.array([exp(float(v)) for v in rng.uniform(-20, 20, 20000)])
digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()[:8]
print(json.dumps({"numpy": [k for k in ("AVX", "AVX2", "FMA3", "AVX512F") if f[k]],
    "openblas": sorted({i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"}),
    "ort_matmul": digest(m), "ort_sigmoid": digest(s), "libm_exp": digest(libm)}))
"""


def dispatch_row(label: str, cpu: str | None, tunables: bool) -> str:
    """One row of the dispatch-evidence table: PROBE run natively or under ``qemu -cpu cpu``."""
    argv = ([QEMU, "-cpu", cpu] if cpu else []) + [sys.executable, "-c", PROBE]
    done = subprocess.run(
        argv, env=environment(tunables), capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "TCG doesn't support" not in line]
        return f"| {label} | error: {(lines or [f'exit {done.returncode}'])[-1][:120]} | | | | |"
    r = json.loads(done.stdout.strip().splitlines()[-1])
    numpy = ", ".join(r["numpy"]) or "none (SSE4.2)"
    return f"| {label} | {numpy} | {','.join(r['openblas'])} | `{r['ort_matmul']}` `{r['ort_sigmoid']}` | `{r['libm_exp']}` |"


def dispatch_table(cpus: list[tuple[str, str | None, bool]]) -> str:
    """The evidence that each library dispatches on the CPUID qemu reports (numerics not pinned here)."""
    head = (
        "| CPU | numpy sees | OpenBLAS kernel | onnxruntime MatMul, Sigmoid (sha256) | glibc exp (sha256) |"
    )
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda c: dispatch_row(*c), cpus))
    return "\n".join([head, "|---|---|---|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numerics", choices=("portable", "native"), default="portable")
    parser.add_argument("--cpus", default=",".join(CPUS), help="comma-separated qemu -cpu models")
    parser.add_argument("--matrix", action="store_true", help="also the five test-matrix projects")
    parser.add_argument("--tunables", action="store_true", help=f"also native with GLIBC_TUNABLES={TUNABLES}")
    parser.add_argument("--dispatch", action="store_true", help="the dispatch-evidence table instead of runs")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(
            f"{QEMU} not found: install Debian's qemu-user (apt-get install -y qemu-user, or make system-deps)"
        )
    cpus: list[tuple[str, str | None, bool]] = [("native", None, False)]
    cpus += [("native, " + TUNABLES, None, True)] if args.tunables else []
    cpus += [(f"qemu -cpu {c}", c, False) for c in args.cpus.split(",") if c]
    if args.dispatch:
        table = dispatch_table(cpus)
        print(table)
        if args.write:
            write_section(
                "qemu-cpus-dispatch",
                "### What each library dispatches to under qemu (`bench/qemu_cpus.py "
                f"{' '.join(sys.argv[1:])}`)\n\nHashes of the same computation: equal hashes, equal bits.\n\n"
                + table,
            )
        return
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mlci-qemu-") as tmp:
        root = Path(tmp)
        global START_PORTABLE
        START_PORTABLE = args.numerics == "portable"
        names = projects(root, args.numerics)
        if not args.matrix:
            names = {"breast_cancer": names["breast_cancer"]}
        jobs = [(label, cpu, tun, name) for label, cpu, tun in cpus for name in names]
        with ThreadPoolExecutor(2) as pool:  # two children at a time: 2 cores
            results = list(
                pool.map(
                    lambda j: run_one(j[1], names[j[3]], root / f"ws-{j[0]}-{j[3]}".replace(" ", "_"), j[2]),
                    jobs,
                )
            )
        reference = {
            name: r for (label, _, _, name), r in zip(jobs, results, strict=True) if label == "native"
        }
        for (label, _, _, name), result in zip(jobs, results, strict=True):
            digest = result.get("manifest", {}).get("digest", "error")
            diff = differences(reference[name], result) if label != "native" else []
            rows.append(
                f"| {label} | {name} | `{digest[7:15]}` | {result['seconds']:.0f} | "
                + ("; ".join(diff) or "=")
                + " |"
            )
            print(rows[-1], flush=True)
    head = "| CPU | project | digest | s | differs from native (files; hashed fields; measured evidence; profile.json keys) |"
    table = "\n".join([head, "|---|---|---|---|---|", *rows])
    if args.write:
        write_section(
            f"qemu-cpus-{args.numerics}" + ("-matrix" if args.matrix else ""),
            f"### Emulated CPUs, `numerics = {args.numerics}` (`bench/qemu_cpus.py {' '.join(sys.argv[1:])}`)\n\n"
            f"`{QEMU}` (QEMU 7.2 TCG, up to AVX2) versus the native AVX-512 host; s: wall seconds of the run.\n\n"
            + table,
        )


if __name__ == "__main__":
    main()
