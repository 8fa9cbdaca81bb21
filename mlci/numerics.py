"""Portable numerics: the same floating-point bits from any x86-64-v2 CPU and any core count.

What moves the last bits of a trained model between machines (measured by bench/numerics_matrix.py with
simulated CPUs, and by bench/qemu_cpus.py under emulated real ones): the OpenBLAS kernel, which OpenBLAS
picks for the CPU it runs on; numpy's runtime SIMD dispatch; the number of BLAS/OpenMP threads; and
glibc's maths library, whose ``exp``, ``log``, ``pow``… are FMA code on a CPU with AVX2 and FMA (an
ifunc chosen from CPUID) and SSE2 code on one without (measured: 18 of 20,000 ``exp`` results differ in
the last bit, enough to move a LogisticRegression's coefficients). ``[reproducibility] numerics =
"portable"`` (the default) pins all four: one OpenBLAS kernel every x86-64-v2 CPU runs (Nehalem), numpy's
dispatch held at its X86_V2 baseline, one thread, and glibc's FMA and AVX2 code paths masked
(``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4``). onnxruntime's kernels follow CPUID with no
setting, so nothing the digest covers is computed by onnxruntime (mlci.model.evaluate). ``"native"``
leaves all of that to the machine: fastest, machine-bound.

The variables are read once, when numpy and OpenBLAS load, so they are set where the process starts:
the `mlci` command (every command that reads mlci.toml) and each stage function (for library use). glibc
reads its tunables earlier still, when the dynamic loader starts the process, so the `mlci` program
restarts itself once with them set (:func:`restart_command`). A process that loaded numpy before, or
started without the tunables (a notebook, a test runner), cannot change them any more: a portable run
there checks what is in effect and refuses, naming the variables to set, when it is not portable.

The manifest's ``numerics`` record (hashed) is read from the libraries themselves (threadpoolctl, numpy),
so two builds whose numerics differ never share a digest, and "portable" is a fact checked, not a wish.
Off x86-64 (arm64) no kernel or dispatch pin is set (none is tested there): one thread still is, the
record names the architecture, and its ``scope`` says the bits hold for that CPU model only, so an arm64
artifact never passes for an x86-64 one nor for portable across arm64 CPUs.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from mlci.errors import ConfigError

__all__ = [
    "GLIBC_HWCAPS_MASK",
    "MODES",
    "PORTABLE_KERNEL",
    "child_environment",
    "is_x86_64",
    "portable_environment",
    "prepare",
    "record",
    "restart_command",
    "scope",
]

MODES = ("portable", "native")
PORTABLE_KERNEL = "Nehalem"  # SSE4.2: every x86-64-v2 CPU runs it
NUMPY_BASELINE = "X86_V2"
_X86 = ("x86_64", "amd64")
# Set by "portable"; NPY_DISABLE_CPU_FEATURES is removed (numpy refuses both at once).
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# glibc's libm picks FMA (or AMD's FMA4) variants of exp, log, pow, sin… when the CPU has them (sysdeps/
# x86_64/fpu/multiarch ifuncs): masked, every x86-64 CPU runs the SSE2 code. Read by ld.so at exec only.
GLIBC_HWCAPS_MASK = ("-AVX2", "-FMA", "-FMA4")
_HWCAPS = "glibc.cpu.hwcaps"
# Set by the `mlci` program when it restarts itself: the user's values of what it changed (JSON).
USER_ENVIRONMENT = "MLCI_NUMERICS_USER_ENV"
_RESTARTED = False  # this process is such a restart: never restart again


def uses_glibc() -> bool:
    """Whether this process runs on glibc (where the libm mask applies)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def glibc_tunables(current: str | None) -> str:
    """``current`` GLIBC_TUNABLES with the libm mask added to its glibc.cpu.hwcaps (other tunables kept)."""
    entries = [e for e in (current or "").split(":") if e]
    hwcaps = [e for e in entries if e.startswith(_HWCAPS + "=")]
    others = [e for e in entries if not e.startswith(_HWCAPS + "=")]
    caps = [c for e in hwcaps for c in e.split("=", 1)[1].split(",") if c]
    caps += [c for c in GLIBC_HWCAPS_MASK if c not in caps]
    return ":".join([*others, f"{_HWCAPS}={','.join(caps)}"])


def _startup_environment() -> dict[str, str]:
    """The environment this process was started with (what ld.so read its tunables from).

    Without /proc only a restarted mlci knows it: it was started with what its first process gave it.
    Anything else cannot tell what a caller put into os.environ later, so it claims nothing."""
    try:
        raw = open("/proc/self/environ", "rb").read()  # noqa: SIM115  (one read of a pseudo-file)
    except OSError:
        return dict(os.environ) if _RESTARTED else {}
    items = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in items}


def libm_mask_in_effect() -> list[str]:
    """The libm mask entries glibc took at this process's start (empty: glibc picks by CPUID)."""
    value = _startup_environment().get("GLIBC_TUNABLES", "")
    caps = [c for e in value.split(":") if e.startswith(_HWCAPS + "=") for c in e.split("=", 1)[1].split(",")]
    return [c for c in GLIBC_HWCAPS_MASK if c in caps]


def is_x86_64() -> bool:
    """Whether this is an x86-64 machine (where the kernel and dispatch pins apply)."""
    return platform.machine().lower() in _X86


def portable_environment() -> dict[str, str | None]:
    """The variables portable numerics sets (None: removed), before numpy and OpenBLAS load."""
    env: dict[str, str | None] = dict.fromkeys(THREAD_VARIABLES, "1")
    if is_x86_64():
        env |= {"OPENBLAS_CORETYPE": PORTABLE_KERNEL, "NPY_ENABLE_CPU_FEATURES": NUMPY_BASELINE, "NPY_DISABLE_CPU_FEATURES": None}
        if uses_glibc():
            env["GLIBC_TUNABLES"] = glibc_tunables(os.environ.get("GLIBC_TUNABLES"))
    return env


def restart_command(mode: str, argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The command and environment the `mlci` program restarts itself with so ``mode`` is in force from
    the start (glibc's tunables are read only when a process starts), or None when it already is.

    ``argv`` is the interpreter's arguments as the program was started (sys.orig_argv[1:]: the console
    script's path or ``-m mlci``, then the command), so the restart finds mlci where the first start did
    (``-m mlci`` from a directory holding mlci's source would import that instead). The user's values of the variables changed travel
    in USER_ENVIRONMENT, so the servers the restarted process starts get them back (child_environment).
    A process that was restarted once is never restarted again.
    """
    import json

    if mode != "portable" or not is_x86_64() or not uses_glibc() or _RESTARTED or USER_ENVIRONMENT in os.environ:
        return None
    if len(libm_mask_in_effect()) == len(GLIBC_HWCAPS_MASK):
        return None
    changes = portable_environment()
    env = dict(os.environ)
    user = {name: env.get(name) for name in changes}
    _apply(env, changes)
    env[USER_ENVIRONMENT] = json.dumps(user, sort_keys=True)
    return [sys.executable, *argv], env


def _restore_user_environment() -> None:
    """In a restarted `mlci`: take back what the first process recorded of the user's environment."""
    import json

    global _RESTARTED
    raw = os.environ.pop(USER_ENVIRONMENT, None)
    if raw is None:
        return
    _RESTARTED = True
    try:
        user = json.loads(raw)
    except ValueError:
        return
    if isinstance(user, dict):
        _BEFORE.update({str(k): v if isinstance(v, str) else None for k, v in user.items()})


# Whether prepare() set the portable variables before numpy loaded (then a library that is not portable
# ignored them, rather than loading too early).
_PINNED_BEFORE_LOAD = False
# What this process's environment held before prepare() changed it (None: unset), for the processes
# mlci starts that do not build (servers): they get the user's environment back (child_environment).
_BEFORE: dict[str, str | None] = {}


def _apply(environ: MutableMapping[str, str], changes: dict[str, str | None]) -> None:
    for name, value in changes.items():
        if environ is os.environ and name not in _BEFORE:
            _BEFORE[name] = os.environ.get(name)
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default os.environ) with every variable prepare() changed put back as the user had it.

    For processes mlci starts that serve rather than build (`mlci serve` for the smoke test and a local
    deploy): portable numerics are a build setting, and a server runs with the machine's own.
    """
    env = dict(os.environ if environ is None else environ)
    for name, value in _BEFORE.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def prepare(mode: str) -> None:
    """Put ``mode``'s numerics in force in this process: before numpy loads, by its environment variables;
    after, by checking what is in force (threads can still be set) and refusing a portable run otherwise."""
    if mode != "portable":
        return
    global _PINNED_BEFORE_LOAD
    if "numpy" not in sys.modules:
        _apply(os.environ, portable_environment())
        _PINNED_BEFORE_LOAD = True
        return
    _apply(os.environ, dict.fromkeys(THREAD_VARIABLES, "1"))  # for a library that loads later
    _state()  # loads every library threadpoolctl is to limit
    _limit_threads()
    problems = _portable_problems(_state())
    if problems:
        raise ConfigError(_refusal(problems))


def _refusal(problems: list[str], pinned_before_load: bool | None = None) -> str:
    """Why this process cannot build with portable numerics, and what to do.

    glibc's libm mask is taken only when a process starts, so a process that started without it can only
    be started again with it (the `mlci` program does that itself). For the rest: either numpy loaded
    before mlci could set the variables (library use), or mlci set them first and a library did not
    honour them (MKL, an OpenBLAS built for one CPU rather than with DYNAMIC_ARCH).
    """
    pinned = _PINNED_BEFORE_LOAD if pinned_before_load is None else pinned_before_load
    variables = " ".join(f"{k}={v}" for k, v in portable_environment().items() if v is not None)
    unset = [k for k, v in portable_environment().items() if v is None]
    libm = [p for p in problems if p.startswith("glibc's libm")]
    others = [p for p in problems if p not in libm]
    native = ", or set [reproducibility] numerics = \"native\" in mlci.toml (machine-bound bits, said so in the manifest)."
    head = "[reproducibility] numerics = \"portable\" "
    if not others:
        return (
            head + f"needs glibc's maths library to run the same code on every CPU, but {'; '.join(libm)}. "
            f"Run the `mlci` command (it restarts itself with it), or start this process with {variables}"
            + (f" and without {', '.join(unset)}" if unset else "")
            + native
        )
    also = f" Also, {'; '.join(libm)}." if libm else ""
    if pinned:
        return (
            head + "needs numpy and OpenBLAS to honour the portable settings; "
            f"mlci set {variables} before numpy loaded, but {'; '.join(others)}. Either this BLAS or numpy "
            "build does not take those settings (MKL, or an OpenBLAS built for one CPU instead of with "
            "DYNAMIC_ARCH), or a library this process imported first loaded its BLAS or OpenMP runtime early."
            + also
            + " Install the numpy and scipy wheels from PyPI (their OpenBLAS honours them)"
            + native
        )
    return (
        head + "needs numpy and OpenBLAS loaded with portable settings, but "
        f"this process loaded them before mlci could set them: {'; '.join(others)}.{also} Run the `mlci` command "
        f"(it sets them first), or start this process with {variables}"
        + (f" and without {', '.join(unset)}" if unset else "")
        + native
    )


def _limit_threads() -> None:
    """One BLAS and one OpenMP thread in a process that already loaded them (threadpoolctl can change that)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return
    threadpool_limits(limits=1)


def _numpy_dispatch() -> tuple[list[str], list[str]]:
    """numpy's baseline and the dispatch targets in effect (enabled by the CPU and not disabled)."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    features = umath.__cpu_features__
    return list(umath.__cpu_baseline__), [t for t in umath.__cpu_dispatch__ if features.get(t)]


def _state() -> dict[str, Any]:
    """The numerics in effect, as the libraries report them (loaded first, so every library is listed)."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS)
    import sklearn.utils._openmp_helpers  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info

    libraries = threadpool_info()
    blas = sorted(
        (
            {"name": lib["internal_api"], "version": lib.get("version"), "kernel": lib.get("architecture"),
             "threads": lib["num_threads"]}
            for lib in libraries if lib["user_api"] == "blas"
        ),
        key=lambda b: (b["name"], str(b["version"])),
    )  # fmt: skip
    openmp = sorted({lib["num_threads"] for lib in libraries if lib["user_api"] == "openmp"})
    baseline, dispatch = _numpy_dispatch()
    return {
        "arch": platform.machine().lower(),
        "blas": blas,
        "openmp_threads": openmp,
        "numpy_baseline": baseline,
        "numpy_dispatch": dispatch,
        # libm's ifuncs: what glibc masked at this process's start (empty: chosen by CPUID; None: not glibc).
        # The C library's version is provenance (the manifest's runtime): equal bits are the same model.
        "libm": {"glibc_masked": libm_mask_in_effect() if uses_glibc() else None},
        "onnxruntime": {"intra_op_threads": 1, "execution_mode": "sequential"},
    }


def _portable_problems(state: dict[str, Any]) -> list[str]:
    """What in ``state`` is not portable (empty when it is)."""
    problems = [f"{b['name']} {b['version']} runs {b['threads']} threads" for b in state["blas"] if b["threads"] != 1]
    problems += [f"OpenMP runs {n} threads" for n in state["openmp_threads"] if n != 1]
    if state["arch"] in _X86:
        problems += [
            f"{b['name']} {b['version']} uses the {b['kernel']} kernel, not {PORTABLE_KERNEL}"
            for b in state["blas"] if str(b["kernel"]).lower() != PORTABLE_KERNEL.lower()
        ]  # fmt: skip
        if state["numpy_dispatch"]:
            problems.append(f"numpy dispatches to {', '.join(state['numpy_dispatch'])} beyond its {NUMPY_BASELINE} baseline")
        masked = (state.get("libm") or {}).get("glibc_masked")
        if masked is not None and len(masked) != len(GLIBC_HWCAPS_MASK):
            problems.append(
                f"glibc's libm picks its FMA code from the CPU: this process started without "
                f"GLIBC_TUNABLES={_HWCAPS}={','.join(GLIBC_HWCAPS_MASK)} (glibc reads it only at process start)"
            )
    return problems


def scope(mode: str, arch: str) -> str:
    """Which machines give the same bits as this one, in ``mode`` on ``arch`` (the record's ``scope``)."""
    if mode != "portable":
        return "this machine: its CPU's kernels and dispatch, its thread counts"
    if arch.lower() in _X86:
        return "any x86-64-v2 CPU, any core count: OpenBLAS kernel, numpy dispatch and threads pinned"
    return (
        f"{arch} CPUs of this model only: threads pinned, but no portable OpenBLAS kernel or numpy dispatch "
        f"level is set off x86-64 (train on linux/amd64 for one digest everywhere)"
    )


def record(mode: str) -> dict[str, Any]:
    """The manifest's ``numerics``: the mode, what it holds for and what was in effect; portable is checked
    to be portable."""
    state = _state()
    if mode == "portable":
        problems = _portable_problems(state)
        if problems:
            raise ConfigError(_refusal(problems))
    return {"mode": mode, "scope": scope(mode, state["arch"]), **state}


_restore_user_environment()
