"""Simulated CPUs: the environment another CPU would give numpy and OpenBLAS, on this machine.

A simulated CPU is an OpenBLAS kernel (``OPENBLAS_CORETYPE``: the kernel OpenBLAS picks for that CPU
family), a numpy dispatch level (``NPY_DISABLE_CPU_FEATURES``: the dispatch targets a CPU of that level
lacks) and a thread count (a machine's cores). All three are read when the libraries load, so each
simulated CPU is a fresh process. Shared by tests/test_numerics.py and bench/numerics_matrix.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

KERNELS = ("Prescott", "Nehalem", "Sandybridge", "Haswell", "Zen", "SkylakeX", "Cooperlake")
# numpy 2.4's x86 dispatch targets above its X86_V2 baseline (numpy._core._multiarray_umath.__cpu_dispatch__).
# Disabling one target does not disable those above it (measured), so a level lists every target above it.
DISPATCH = {
    "AVX512_ICL": "",
    "X86_V4": "AVX512_ICL AVX512_SPR",
    "X86_V3": "X86_V4 AVX512_ICL AVX512_SPR",
    "X86_V2": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}
THREADS = (1, 2)
# Every variable portable numerics sets; GLIBC_TUNABLES too, so a simulated CPU's `mlci` starts as from a
# user's shell and restarts itself to take glibc's libm mask (mlci.numerics.restart_command).
VARIABLES = (
    "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES",
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES",
)  # fmt: skip

_PROBE = (
    "import json, numpy, scipy.linalg, threadpoolctl\n"
    "a = numpy.arange(64.0).reshape(8, 8); a @ a; scipy.linalg.inv(a + numpy.eye(8) * 100)\n"
    "print(json.dumps(sorted({i['architecture'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'})))"
)


class Cpu(NamedTuple):
    """One simulated CPU; ``kernel`` None leaves OpenBLAS to detect this one."""

    kernel: str | None
    dispatch: str
    threads: int | None

    def label(self) -> str:
        return f"{self.kernel or 'auto'}/{self.dispatch}/{self.threads or 'auto'}t"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with none of the numerics variables but this CPU's."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in VARIABLES}
        if self.kernel:
            env["OPENBLAS_CORETYPE"] = self.kernel
        if DISPATCH[self.dispatch]:
            env["NPY_DISABLE_CPU_FEATURES"] = DISPATCH[self.dispatch]
        if self.threads:
            env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(self.threads)
        return env


@functools.cache
def probe(kernel: str) -> list[str] | str:
    """The kernels OpenBLAS reports when asked for ``kernel``, or why this machine cannot run it."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=Cpu(kernel, "AVX512_ICL", 1).environment(),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        return f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:120]}"
    return list(json.loads(done.stdout))


def executable_kernels(kernels: tuple[str, ...] = KERNELS) -> tuple[list[str], dict[str, str]]:
    """The kernels this machine runs, and those it cannot (crashed or refused) with the reason."""
    ok, refused = [], {}
    for kernel in kernels:
        result = probe(kernel)
        if isinstance(result, str):
            refused[kernel] = result
        else:
            ok.append(kernel)
    return ok, refused


def full_matrix(kernels: list[str]) -> list[Cpu]:
    """Every kernel × every dispatch level × 1 and 2 threads."""
    return [Cpu(k, d, t) for k, d, t in itertools.product(kernels, DISPATCH, THREADS)]


def covering_matrix(kernels: list[str]) -> list[Cpu]:
    """Every kernel once, the dispatch levels and thread counts in turn: each kernel, each level and each
    thread count appears (the full product is 14× as many processes; bench/numerics_matrix.py measured
    that only the kernel moved bits, so the product adds runs but no new source of variation)."""
    levels = list(DISPATCH)
    rows = max(len(kernels), len(levels))
    return [Cpu(kernels[i % len(kernels)], levels[i % len(levels)], THREADS[i % len(THREADS)]) for i in range(rows)]


def run_until_evaluate(config: Path, workspace: Path, cpu: Cpu) -> dict[str, Any]:
    """`mlci run --until evaluate` in a fresh process under ``cpu``; the artifact's manifest."""
    done = subprocess.run(
        [sys.executable, "-m", "mlci", "run", "--until", "evaluate", "--json", "--no-cache",
         "--config", str(config), "--workspace", str(workspace)],
        env=cpu.environment(), cwd=config.parent, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"mlci run under {cpu.label()} failed ({done.returncode}):\n{done.stderr[-2000:]}"
    artifact = Path(json.loads(done.stdout)["artifact"])
    return json.loads((artifact / "manifest.json").read_text())


def json_leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a JSON value to {dotted.path: leaf} (to say which fields of two manifests differ)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in json_leaves(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in json_leaves(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}
