"""Portable numerics on a real (emulated) CPU without AVX: the artifact's bits equal the native run's.

tests/test_numerics.py simulates CPUs with environment variables (OpenBLAS kernel, numpy dispatch,
threads). Libraries that read CPUID themselves cannot be simulated that way: onnxruntime's MLAS picks its
GEMM and elementwise kernels from CPUID with no override (so nothing hashed is computed by it any more),
and glibc's libm picks FMA variants of ``exp``/``log`` by ifunc (masked by portable numerics'
GLIBC_TUNABLES; before that mask, this file's digest test failed: sha256:37f3762e… natively,
sha256:e4697ac2… under qemu -cpu Nehalem, model.onnx differing). Debian's
qemu-user (``qemu-x86_64 -cpu Nehalem``: SSE4.2, no AVX; QEMU 7.2's TCG) reports that CPU's CPUID to every
library in the process at once, so the whole `mlci run` dispatches as on a Nehalem. The host runs the same
command natively (this machine has AVX-512): with ``numerics = "portable"`` the two artifacts must be the
same bytes, profile.json first, then the whole digest.

One project (the bundled example, cheap evaluate settings), one CPU, the fewest stages that make
profile.json and the digest (`--until evaluate`); ~10× slower under qemu, hence ``slow``.
bench/qemu_cpus.py is the wider measurement (more CPU models, the test matrix, native numerics).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlci.numerics import is_x86_64

from .conftest import EXAMPLE
from .simulated_cpus import json_leaves as _leaves

QEMU = shutil.which("qemu-x86_64")
CPU = "Nehalem"  # SSE4.2, no AVX/AVX2/FMA/AVX-512: the portable OpenBLAS kernel's own CPU
CHEAP_EVALUATE = "\n[evaluate]\nlatency_runs = 10\noutlier_estimators = 20\n"
VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_NUM_THREADS",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES")  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not is_x86_64(), reason="qemu-x86_64 emulates x86-64 CPUs for x86-64 binaries"),
    pytest.mark.skipif(
        QEMU is None, reason="qemu-x86_64 not installed (Debian's qemu-user; `make system-deps`)"
    ),
]


def _run(config: Path, workspace: Path, cpu: str | None, started_portable: bool = True) -> dict[str, Any]:
    """`mlci run --until evaluate` natively (``cpu`` None) or under ``qemu-x86_64 -cpu cpu``; the
    artifact's manifest, profile.json and each file's sha256.

    ``started_portable``: the process starts with portable numerics' environment, GLIBC_TUNABLES included,
    so `mlci` has no reason to restart itself (numerics.restart_command). Under qemu that matters: qemu-user
    does not follow execve, so a restarted mlci would run natively. False starts it with none of them
    (what a user's shell gives): mlci restarts itself once, natively, to take glibc's libm mask.
    """
    from mlci.numerics import portable_environment

    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if started_portable:
        env |= {k: v for k, v in portable_environment().items() if v is not None}
        env["GLIBC_TUNABLES"] = env["GLIBC_TUNABLES"].split(":")[-1]  # only the libm mask, nothing of ours
    elif cpu is not None:
        raise ValueError("under qemu the run must start portable: qemu-user does not follow mlci's restart")
    argv = [sys.executable, "-m", "mlci", "run", "--until", "evaluate", "--json", "--no-cache",
            "--config", str(config), "--workspace", str(workspace)]  # fmt: skip
    done = subprocess.run(([QEMU, "-cpu", cpu] if cpu else []) + argv, env=env, cwd=config.parent,
                          capture_output=True, text=True, check=False, timeout=900)  # fmt: skip
    assert done.returncode == 0, (
        f"mlci run ({cpu or 'native'}) failed ({done.returncode}):\n{done.stderr[-2000:]}"
    )
    artifact = Path(json.loads(done.stdout)["artifact"])
    return {
        "manifest": json.loads((artifact / "manifest.json").read_text()),
        "profile": json.loads((artifact / "profile.json").read_text()),
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(artifact.iterdir())},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The bundled example with portable numerics, built natively and under qemu's Nehalem, side by side."""
    root = tmp_path_factory.mktemp("qemu")
    project = root / "breast_cancer"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".mlci"))
    config = project / "mlci.toml"
    config.write_text(config.read_text() + CHEAP_EVALUATE + '\n[reproducibility]\nnumerics = "portable"\n')
    with ThreadPoolExecutor(2) as pool:
        native = pool.submit(_run, config, root / "ws-native", None)
        emulated = pool.submit(_run, config, root / f"ws-{CPU}", CPU)
        restarted = pool.submit(_run, config, root / "ws-restarted", None, False)
        return {"native": native.result(), CPU: emulated.result(), "restarted": restarted.result()}


def _differing(a: Any, b: Any) -> list[str]:
    """The leaves of two JSON values that differ, as 'key: a != b' (the first ten)."""
    left, right = _leaves(a), _leaves(b)
    keys = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
    return [f"{k}: {left.get(k)!r} != {right.get(k)!r}" for k in keys[:10]] + (
        ["…"] if len(keys) > 10 else []
    )


def test_the_emulated_cpu_really_lacks_avx(runs: dict[str, dict[str, Any]]) -> None:
    """The premise: under qemu the process saw a Nehalem's CPUID (OpenBLAS picks its kernel from CPUID, and
    with portable numerics both runs record it pinned); the native host has more (AVX-512 here)."""
    probe = subprocess.run(
        [QEMU, "-cpu", CPU, sys.executable, "-c",
         "from numpy._core._multiarray_umath import __cpu_features__ as f; print(f['AVX'], f['AVX2'], f['FMA3'])"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert probe.stdout.split() == ["False", "False", "False"], probe.stdout
    assert runs[CPU]["manifest"]["numerics"]["mode"] == "portable"


def test_profile_json_is_the_same_bytes_on_a_cpu_without_avx(runs: dict[str, dict[str, Any]]) -> None:
    """profile.json (hashed: prediction profile and outlier thresholds evaluate computes with onnxruntime,
    whose MLAS kernels follow CPUID) is byte-identical under qemu's Nehalem and natively."""
    native, emulated = runs["native"], runs[CPU]
    assert native["sha256"]["profile.json"] == emulated["sha256"]["profile.json"], "\n".join(
        ["profile.json differs under qemu -cpu " + CPU, *_differing(native["profile"], emulated["profile"])]
    )


def test_the_digest_is_the_same_on_a_cpu_without_avx(runs: dict[str, dict[str, Any]]) -> None:
    """The whole identity: every artifact file's bytes and so the digest, under qemu's Nehalem and natively."""
    native, emulated = runs["native"], runs[CPU]
    files = [
        name
        for name in native["sha256"]
        if name != "manifest.json" and native["sha256"][name] != emulated["sha256"].get(name)
    ]
    assert native["manifest"]["digest"] == emulated["manifest"]["digest"], (
        f"digest {native['manifest']['digest']} natively, {emulated['manifest']['digest']} under qemu -cpu {CPU}; "
        f"files that differ: {files or 'none'}"
    )


def test_a_run_started_without_the_libm_mask_restarts_itself_and_gives_the_same_digest(
    runs: dict[str, dict[str, Any]],
) -> None:
    """From a shell without any of portable numerics' variables, `mlci run` restarts itself with glibc's
    libm mask (read only at process start): the same digest as a run started with it, and the record says so."""
    from mlci.numerics import GLIBC_HWCAPS_MASK

    assert runs["restarted"]["manifest"]["numerics"]["libm"]["glibc_masked"] == list(GLIBC_HWCAPS_MASK)
    assert runs["restarted"]["manifest"]["digest"] == runs["native"]["manifest"]["digest"]
