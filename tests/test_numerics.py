"""Portable numerics (issue 14, items 2 and 3): one digest under every simulated CPU, and proof that the
variation it removes is real (``numerics = "native"`` under the same CPUs gives other bits).

A simulated CPU is an OpenBLAS kernel × a numpy dispatch level × a thread count (tests/simulated_cpus.py),
each `mlci run --until evaluate` in a fresh process. The fast tests run a covering pair on the bundled
example (whose LogisticRegression coefficients move with the kernel); a covering design (every kernel,
every dispatch level, both thread counts) over the test matrix's five estimators on the mixed CSV and the
example is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlci.config import load_config
from mlci.errors import ConfigError
from mlci.numerics import GLIBC_HWCAPS_MASK, PORTABLE_KERNEL, is_x86_64, record

from .conftest import EXAMPLE, ProjectFactory
from .simulated_cpus import Cpu, covering_matrix, executable_kernels, run_until_evaluate
from .test_pipeline import CASES, SCALED

pytestmark = pytest.mark.skipif(not is_x86_64(), reason="the simulated CPUs are x86-64 OpenBLAS kernels")

# Far apart: the SSE3 kernel, numpy at its baseline, one thread vs the AVX-512 kernel, full dispatch, two.
PAIR = (Cpu("Prescott", "X86_V2", 1), Cpu("SkylakeX", "AVX512_ICL", 2))
CHEAP_EVALUATE = "\n[evaluate]\nlatency_runs = 10\noutlier_estimators = 20\n"


def _example(root: Path, numerics: str | None) -> Path:
    """The bundled example (cheap evaluate settings); ``numerics`` None keeps mlci's default."""
    target = root / "breast_cancer"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".mlci"))
    table = f'\n[reproducibility]\nnumerics = "{numerics}"\n' if numerics else ""
    (target / "mlci.toml").write_text((target / "mlci.toml").read_text() + CHEAP_EVALUATE + table)
    return target / "mlci.toml"


def _runnable(cpus: list[Cpu]) -> list[Cpu]:
    ok, refused = executable_kernels(tuple(sorted({c.kernel for c in cpus if c.kernel})))
    assert ok, f"this machine runs none of the kernels: {refused}"
    return [c for c in cpus if c.kernel in ok]


def _manifests(config: Path, root: Path, cpus: list[Cpu]) -> dict[Cpu, dict]:
    """The manifest of one run per simulated CPU, two processes at a time."""
    with ThreadPoolExecutor(2) as pool:
        runs = pool.map(lambda ic: run_until_evaluate(config, root / f"ws{ic[0]}", ic[1]), enumerate(cpus))
        return dict(zip(cpus, runs, strict=True))


def test_portable_numerics_give_one_digest_under_far_apart_cpus(tmp_path: Path) -> None:
    """The default (portable) numerics: the same digest, model bytes and parity under both CPUs of PAIR."""
    manifests = _manifests(_example(tmp_path, None), tmp_path, _runnable(list(PAIR)))
    digests = {cpu.label(): m["digest"] for cpu, m in manifests.items()}
    assert len(set(digests.values())) == 1, f"one digest expected under every simulated CPU; got {digests}"
    first = next(iter(manifests.values()))
    assert first["numerics"]["mode"] == "portable"
    assert {b["kernel"] for b in first["numerics"]["blas"]} == {PORTABLE_KERNEL}
    assert first["numerics"]["numpy_dispatch"] == [] and first["numerics"]["openmp_threads"] == [1]
    # started without GLIBC_TUNABLES (tests/simulated_cpus.py), each run restarted itself to mask libm's FMA code
    assert first["numerics"]["libm"]["glibc_masked"] == list(GLIBC_HWCAPS_MASK)


def test_native_numerics_show_the_variation_is_real(tmp_path: Path) -> None:
    """numerics = "native" under the same two CPUs: the model's bytes differ (the kernel moves the
    LogisticRegression coefficients), and the manifests say native and name each kernel."""
    manifests = _manifests(_example(tmp_path, "native"), tmp_path, _runnable(list(PAIR)))
    models = {cpu.label(): m["files"]["model.onnx"]["sha256"] for cpu, m in manifests.items()}
    assert len(set(models.values())) == len(models), f"native numerics should move the model's bits; got {models}"
    assert {m["numerics"]["mode"] for m in manifests.values()} == {"native"}
    assert len({m["digest"] for m in manifests.values()}) == len(manifests)


def test_a_process_that_loaded_numpy_first_is_refused_a_portable_build(tmp_path: Path) -> None:
    """Library use: numpy loaded with this machine's kernel before mlci could pin it. The run is refused
    with the variables to set, rather than recorded as portable."""
    config = _example(tmp_path, None)
    script = (
        "import numpy, sys\nfrom mlci.config import load_config\nfrom mlci.pipeline import run_pipeline\n"
        f"run_pipeline(load_config({str(config)!r}), until='evaluate')\n"
    )
    env = Cpu("Haswell", "AVX512_ICL", None).environment()
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "loaded them before mlci could set them" in done.stderr
    assert f"uses the Haswell kernel, not {PORTABLE_KERNEL}" in done.stderr
    assert "OPENBLAS_CORETYPE=Nehalem" in done.stderr and 'numerics = "native"' in done.stderr


def test_this_suite_runs_portable_so_record_says_portable() -> None:
    """tests/__init__.py pins the numerics before numpy loads; the record is read from the libraries."""
    assert os.environ["OPENBLAS_CORETYPE"] == PORTABLE_KERNEL
    numerics = record("portable")
    assert numerics["arch"] == "x86_64" and {b["threads"] for b in numerics["blas"]} == {1}
    assert numerics["libm"]["glibc_masked"] == list(GLIBC_HWCAPS_MASK)  # tests/conftest.py restarted pytest with it


def test_numerics_mode_is_validated(make_project: ProjectFactory) -> None:
    config = load_config(make_project(extra='\n[reproducibility]\nnumerics = "native"\n'))
    assert config.reproducibility.numerics == "native"
    assert load_config(make_project()).reproducibility.numerics == "portable"
    with pytest.raises(ConfigError, match=r'numerics must be "portable" .* or "native" .*got \'fast\''):
        load_config(make_project(extra='\n[reproducibility]\nnumerics = "fast"\n'))


def _matrix_project(root: Path, case: str, numerics: str) -> Path:
    """A test-matrix estimator on the mixed CSV (or the bundled example), with ``numerics``."""
    from .conftest import BASE_TOML, mixed_frame

    if case == "breast_cancer":
        return _example(root, numerics)
    task, target, estimator = CASES[case]
    root.mkdir(parents=True)
    mixed_frame().to_csv(root / "data.csv", index=False)
    drop = 'drop = ["spend"]' if target == "churn" else 'drop = ["churn"]'
    text = BASE_TOML.format(name="demo", task=task, target=target, estimator=estimator + "\n" + SCALED, data_extra=drop)
    (root / "mlci.toml").write_text(text + f'\n[reproducibility]\nnumerics = "{numerics}"\n')
    return root / "mlci.toml"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["breast_cancer", *sorted(CASES)])
def test_every_kernel_level_and_thread_count_give_one_digest_per_estimator(tmp_path: Path, case: str) -> None:
    """Every kernel this machine runs, every numpy dispatch level and 1 and 2 threads (a covering design,
    tests/simulated_cpus.py covering_matrix; the full product is bench/numerics_matrix.py): one digest."""
    ok, refused = executable_kernels()
    cpus = covering_matrix(ok)
    manifests = _manifests(_matrix_project(tmp_path / "p", case, "portable"), tmp_path, cpus)
    digests = {cpu.label(): m["digest"] for cpu, m in manifests.items()}
    assert len(set(digests.values())) == 1, f"{case}: one digest expected (kernels refused here: {refused}); got {digests}"


def test_commands_that_build_nothing_run_under_any_cpu(tmp_path: Path) -> None:
    """`mlci smoke`, `gate` and `status` judge or report an artifact; they build nothing, so the numerics
    mode must not stop them. They import numpy before reading mlci.toml, so a portable check there refused
    them on every CPU whose own kernel is not the portable one (the Dagger smoke and gate stages too)."""
    config = _example(tmp_path, None)
    env = {**Cpu("Haswell", "AVX512_ICL", 2).environment(), "PYTHONHASHSEED": "0"}

    def mlci(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlci", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    built = subprocess.run([sys.executable, "-m", "mlci", "run", "-c", str(config), "--until", "evaluate", "--json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    artifact = json.loads(built.stdout)["artifact"]
    smoke = mlci("smoke", artifact, "-c", str(config))
    assert smoke.returncode == 0 and "smoke passed" in smoke.stdout, smoke.stderr[-2000:]
    gate = mlci("gate", artifact, "-c", str(config), "--production", "none")
    assert gate.returncode == 0 and "gate passed" in gate.stdout, gate.stderr[-2000:]
    status = mlci("status", "-c", str(config))
    assert status.returncode == 0, status.stderr[-2000:]


def test_a_refusal_says_whether_mlci_set_the_variables_too_late_or_a_library_ignored_them() -> None:
    """When mlci set the variables before numpy loaded and the record still is not portable (MKL, an
    OpenBLAS built for one CPU), saying numpy "loaded them before mlci could set them" sends the user to
    the wrong fix. Which case applies is what prepare() did in this process (checked in a fresh one)."""
    from mlci.numerics import _refusal

    problems = ["mkl 2024.2 uses the skylake-avx512 kernel, not Nehalem"]
    ignored = _refusal(problems, pinned_before_load=True)
    assert "mlci set OPENBLAS_NUM_THREADS=1" in ignored and "OPENBLAS_CORETYPE=Nehalem NPY_ENABLE_CPU_FEATURES=X86_V2" in ignored and "before numpy loaded" in ignored
    assert problems[0] in ignored and "DYNAMIC_ARCH" in ignored and 'numerics = "native"' in ignored
    assert "before mlci could set them" not in ignored
    late = _refusal(problems, pinned_before_load=False)
    assert "loaded them before mlci could set them" in late and "DYNAMIC_ARCH" not in late
    probe = (
        "import sys\nfrom mlci import numerics\nfirst = numerics._PINNED_BEFORE_LOAD\n"
        "numerics.prepare('portable')\nprint(first, numerics._PINNED_BEFORE_LOAD, 'numpy' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NPY_ENABLE_CPU_FEATURES")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "True", "False"]


def test_the_record_says_which_machines_share_its_bits() -> None:
    """"portable" off x86-64 pins only the threads: the record must not claim more than that."""
    from mlci.numerics import scope

    numerics = record("portable")
    assert numerics["scope"] == scope("portable", "x86_64") and "any x86-64-v2 CPU" in numerics["scope"]
    arm = scope("portable", "aarch64")
    assert arm.startswith("aarch64 CPUs of this model only") and "linux/amd64" in arm
    assert scope("native", "x86_64").startswith("this machine")


def test_the_stage_cache_key_covers_the_numerics_record_and_the_config_defaults() -> None:
    """The manifest's numerics record (hashed) is written by mlci/numerics.py and the config's defaults live
    in mlci/config.py: a change to either must miss the stage cache, or one commit gives two digests (a
    restored CI cache holding the old record, a fresh clone the new one)."""
    from mlci.stages import code_digest, code_files

    names = {f"{p.parent.name}/{p.name}" for p in code_files()}
    assert {"mlci/numerics.py", "mlci/config.py", "mlci/stages.py", "mlci/canonical.py"} <= names, names
    assert any(name.endswith("/evaluate.py") for name in names)
    assert code_digest() == code_digest() and code_digest() != code_digest(("mlci.serving",))


def test_a_process_started_without_the_libm_mask_is_refused_a_portable_build(tmp_path: Path) -> None:
    """glibc picks FMA variants of exp, log, pow… from CPUID when the process starts (bench/qemu_cpus.py:
    the bundled example's model.onnx differs between a CPU with FMA and one without). Library use in a
    process started without GLIBC_TUNABLES cannot take the mask any more: refused, saying how to start."""
    config = _example(tmp_path, None)
    script = (
        "from mlci.config import load_config\nfrom mlci.pipeline import run_pipeline\n"
        f"run_pipeline(load_config({str(config)!r}), until='evaluate')\n"
    )
    env = Cpu(None, "AVX512_ICL", None).environment()  # none of portable numerics' variables, as from a shell
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "needs glibc's maths library to run the same code on every CPU" in done.stderr, done.stderr[-1500:]
    assert "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4" in done.stderr and "restarts itself" in done.stderr
    assert not (tmp_path / "breast_cancer" / ".mlci" / "artifacts").exists() or not any(
        (tmp_path / "breast_cancer" / ".mlci" / "artifacts").iterdir()
    )


def test_glibc_tunables_keep_the_users_own_and_add_the_mask_once() -> None:
    from mlci.numerics import glibc_tunables

    assert glibc_tunables(None) == "glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4"
    assert glibc_tunables("glibc.malloc.check=3") == "glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4"
    mine = "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.tcache_count=0"
    assert glibc_tunables(mine) == "glibc.malloc.tcache_count=0:glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-FMA4"
    assert glibc_tunables(glibc_tunables(mine)) == glibc_tunables(mine)
