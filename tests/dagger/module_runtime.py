"""The Python SDK runtime's install step for this module, as the dagger v0.21.8 engine runs it, on this machine.

What the runtime does (dagger/dagger at v0.21.8, sdk/python/runtime/), step by step:

- uv: the version pinned in images/uv/Dockerfile:1 (``ghcr.io/astral-sh/uv:0.10.3@sha256:…``); the engine
  bundles those binaries into the SDK's dist/ (toolchains/engine-dev/build/sdk.go), and main.go:302 uses
  them unless pyproject.toml's ``[tool.dagger] uv-version`` overrides it.
- Python: the base image python:3.14-slim (images/base/Dockerfile:1) re-tagged from requires-python
  ``>=3.11`` to python:3.11-slim (discovery.go findPythonVersion and parseBaseImage).
- The SDK it vendors into ./sdk: the engine's bundled copy of sdk/python (sdk.go: pyproject.toml, uv.lock,
  src/**/*.py, src/**/*.typed, codegen/, LICENSE, README.md, without src/dagger/_engine/ and
  src/dagger/provisioning/), filtered again by main.go:52's ``+ignore`` and without dist/ (main.go:394).
  Its pyproject.toml says ``version = "0.0.0"``: the installed dagger-io is 0.0.0, never 0.21.x.
  (main.go:421 also regenerates src/dagger/client/gen.py from the engine's introspection; here the
  tag's committed gen.py, generated from the same core API, stands in for it.)
- The module's own ./sdk and ./.venv are dropped first (discovery.go DirExcludes).
- Environment (main.go WithBase, WithSource, WithInstall): UV_SYSTEM_PYTHON=1, UV_LINK_MODE=copy,
  UV_NATIVE_TLS=1, UV_PROJECT_ENVIRONMENT=/opt/venv, UV_COMPILE_BYTECODE=1, PYTHONUNBUFFERED=1,
  DAGGER_MODULE, DAGGER_DEFAULT_PYTHON_PACKAGE, DAGGER_MAIN_OBJECT; uv's cache is a cache volume.
- With a uv.lock in the module (discovery.go UseUvLock): ``uv lock`` (main.go:473, WithUpdates), then
  ``uv sync --no-dev`` (main.go:509) and the venv is activated. Without one (and no requirements.lock):
  ``uv pip install -e ./sdk -e .`` then ``uv pip check`` (main.go:521-540).
- The entrypoint /runtime (template/runtime.py) runs ``dagger.mod.cli.app``: ``load_module()`` loads the
  ``dagger.mod`` entry point ``main_object`` and ``--register`` runs ``Module.register()``.

On a machine without the dagger source mirror, the SDK is rebuilt from PyPI's dagger-io 0.21.8 sdist with
its version set back to 0.0.0 and codegen/pyproject.toml (the sdk's uv workspace member, which the sdist
does not carry) added; test_module_load.py checks that rebuild against the mirror where it is present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGGER_TAG = "v0.21.8"
UV_VERSION = "0.10.3"  # sdk/python/runtime/images/uv/Dockerfile:1 at v0.21.8
PYTHON_VERSION = "3.11"  # python:<requires-python>-slim, discovery.go parseBaseImage
MIRROR = Path(os.environ.get("MLCI_DAGGER_MIRROR", "/work/.mirror/dagger+dagger/repo"))
SDIST = "dagger_io-0.21.8.tar.gz"
SDIST_SHA256 = "f0d2791b748d0157245d33ab30ad636918d7a619f064a08088a1cbeb7ff456e5"

# sdk/python/codegen/pyproject.toml at v0.21.8 (a workspace member of the SDK; not in the sdist).
CODEGEN_PYPROJECT = """\
[project]
name = "codegen"
version = "0.0.0"
description = "Codegen for the Python SDK"
requires-python = ">= 3.10"
dependencies = ["graphql-core>=3.2.3"]

[build-system]
requires = ["uv_build>=0.8.4,<0.9.0"]
build-backend = "uv_build"
"""

# toolchains/engine-dev/build/sdk.go: what the engine bundles of sdk/python.
BUNDLE_INCLUDE = [
    "pyproject.toml",
    "uv.lock",
    "src/**/*.py",
    "src/**/*.typed",
    "codegen/",
    "runtime/",
    "LICENSE",
    "README.md",
]
BUNDLE_EXCLUDE = ["src/dagger/_engine/", "src/dagger/provisioning/"]
# sdk/python/runtime/main.go:52: what the runtime keeps of the bundle (dist/ is dropped at main.go:394).
RUNTIME_KEEP = ["pyproject.toml", "uv.lock", "src/**/*.py", "src/**/*.typed", "codegen/pyproject.toml", "codegen/**/*.py", "LICENSE", "README.md"]  # fmt: skip

# What the runtime's WithSource step sets for this module (dagger.json name "mlci").
MODULE_ENV = {
    "DAGGER_MODULE": "mlci",
    "DAGGER_DEFAULT_PYTHON_PACKAGE": "mlci_dagger",
    "DAGGER_MAIN_OBJECT": "Mlci",
}


class StepFailed(AssertionError):
    """One of the runtime's install commands exited non-zero: the module would not load on the engine."""


def cache_dir() -> Path:
    """``$MLCI_TEST_CACHE``, else ``$XDG_CACHE_HOME/mlci-tests``, else ``~/.cache/mlci-tests``."""
    if os.environ.get("MLCI_TEST_CACHE"):
        return Path(os.environ["MLCI_TEST_CACHE"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "mlci-tests"


def _matches(pattern: str, rel: str) -> bool:
    """Whether ``rel`` (a file path) matches a Dagger include pattern: ``dir/`` is a prefix, ``**/`` any depth."""
    if pattern.endswith("/"):
        return rel.startswith(pattern)
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, rel) is not None


def vendored_files(tree: Path) -> dict[str, bytes]:
    """The files of an sdk/python tree that the runtime puts into the module's ./sdk, by relative path."""
    files = {}
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        bundled = any(_matches(p, rel) for p in BUNDLE_INCLUDE) and not any(
            _matches(p, rel) for p in BUNDLE_EXCLUDE
        )
        if bundled and any(_matches(p, rel) for p in RUNTIME_KEEP):
            files[rel] = path.read_bytes()
    return files


def write_tree(files: dict[str, bytes], dest: Path) -> Path:
    """Write ``files`` (relative path → content) under ``dest``."""
    for rel, content in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(content)
    return dest


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run one install command; raise StepFailed with its output when it exits non-zero."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        shown = " ".join([Path(argv[0]).name, *argv[1:]])
        raise StepFailed(f"`{shown}` exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """``final`` if it exists; else ``build(tmp)`` then rename tmp to ``final`` (so a killed run leaves no half cache)."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        tmp.rename(final)
    except OSError:  # another run got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def uv_tool(cache: Path) -> Path:
    """The uv binary at the runtime's pinned version, from PyPI's ``uv`` wheel, in a cached venv."""

    def build(tmp: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"]
        done = subprocess.run(pip, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StepFailed(
                f"could not install uv=={UV_VERSION} from PyPI (pip exited {done.returncode}):\n{done.stderr}"
            )

    uv = _atomic_dir(cache / f"uv-{UV_VERSION}", build) / "bin" / "uv"
    version = subprocess.run(
        [str(uv), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    if version[:2] != ["uv", UV_VERSION]:
        raise StepFailed(
            f"expected uv {UV_VERSION} in {uv.parent.parent}, got {' '.join(version)}: delete that directory"
        )
    return uv


def pypi_sdist(cache: Path) -> Path:
    """PyPI's dagger-io 0.21.8 sdist (cached), checked against its sha256."""

    def build(tmp: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            "dagger-io",
            "-d",
            str(tmp),
            "dagger-io==0.21.8",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StepFailed(
                f"could not download dagger-io 0.21.8's sdist from PyPI (pip exited {done.returncode}):\n{done.stderr}"
            )

    sdist = _atomic_dir(cache / "dagger-io-0.21.8-sdist", build) / SDIST
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise StepFailed(
            f"{sdist}: expected sha256 {SDIST_SHA256}, got {digest}: delete {sdist.parent} and re-run"
        )
    return sdist


def sdk_from_pypi(cache: Path, work: Path) -> Path:
    """sdk/python as the engine bundles it, rebuilt from the sdist: version 0.0.0, codegen's pyproject added."""
    out = work / "pypi-sdk"
    with tarfile.open(pypi_sdist(cache)) as tar:
        tar.extractall(work / "sdist", filter="data")
    shutil.copytree(work / "sdist" / "dagger_io-0.21.8", out)
    set_engine_version(out / "pyproject.toml")
    write_tree({"codegen/pyproject.toml": CODEGEN_PYPROJECT.encode()}, out)
    return out


def set_engine_version(pyproject: Path) -> None:
    """Set the sdist's ``version = "0.21.8"`` back to the ``0.0.0`` of sdk/python/pyproject.toml at the tag."""
    text = pyproject.read_text()
    if text.count('\nversion = "0.21.8"\n') != 1:
        raise StepFailed(
            f'{pyproject}: expected one line `version = "0.21.8"` to set to the engine copy\'s "0.0.0", '
            f"got {text.count('version = ')} version lines: is this dagger-io 0.21.8's sdist?"
        )
    pyproject.write_text(text.replace('\nversion = "0.21.8"\n', '\nversion = "0.0.0"\n'))


def mirror_show(path: str) -> str:
    """A file of the dagger repository at the tag, from the mirror."""
    return subprocess.run(
        ["git", "-C", str(MIRROR), "show", f"{DAGGER_TAG}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def sdk_from_mirror(work: Path) -> Path:
    """sdk/python at the tag, from the mirror (``git archive v0.21.8:sdk/python``)."""
    out = work / "mirror-sdk"
    out.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(MIRROR), "archive", f"{DAGGER_TAG}:sdk/python"], capture_output=True, check=True
    )
    (work / "sdk.tar").write_bytes(archive.stdout)
    with tarfile.open(work / "sdk.tar") as tar:
        tar.extractall(out, filter="data")
    return out


def module_dir(work: Path, sdk_tree: Path, lock: bool) -> Path:
    """ci/ as the runtime lays it out: no .venv, sdk or caches of its own, the SDK vendored at ./sdk.

    ``lock`` keeps ci/uv.lock (the runtime then takes the uv.lock path); without it, the no-lock path.
    """
    mod = work / "src" / "ci"
    ignore = shutil.ignore_patterns(".venv", "sdk", "__pycache__", *([] if lock else ["uv.lock"]))
    shutil.copytree(REPO / "ci", mod, ignore=ignore)
    write_tree(vendored_files(sdk_tree), mod / "sdk")
    return mod


def runtime_env(cache: Path, venv: Path) -> dict[str, str]:
    """The runtime container's environment, with ``venv`` for /opt/venv and a cached uv cache volume."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "DAGGER_", "PYTHON"))
    }
    env.update({
        "PYTHONUNBUFFERED": "1", "UV_SYSTEM_PYTHON": "1", "UV_LINK_MODE": "copy", "UV_NATIVE_TLS": "1",
        "UV_PROJECT_ENVIRONMENT": str(venv), "UV_COMPILE_BYTECODE": "1", **MODULE_ENV,
        # Not the runtime's: its image has one Python and a cache volume; here, pick 3.11 and never download one.
        "UV_PYTHON": PYTHON_VERSION, "UV_PYTHON_DOWNLOADS": "never", "UV_CACHE_DIR": str(cache / "uv-cache"),
    })  # fmt: skip
    return env


def install_without_lock(uv: Path, mod: Path, env: dict[str, str]) -> Path:
    """main.go:521-540: ``uv pip install -e ./sdk -e .`` then ``uv pip check``; returns the venv's python.

    The image installs into its system Python (UV_SYSTEM_PYTHON); here a fresh venv of the same Python.
    """
    venv = Path(env["UV_PROJECT_ENVIRONMENT"])
    run([str(uv), "venv", "-q", str(venv)], mod, env)
    python = ["--python", str(venv / "bin" / "python")]
    run([str(uv), "pip", "install", *python, "-e", "./sdk", "-e", "."], mod, env)
    run([str(uv), "pip", "check", *python], mod, env)
    return venv / "bin" / "python"


def install_with_lock(uv: Path, mod: Path, env: dict[str, str]) -> Path:
    """main.go:473 then 509: ``uv lock`` then ``uv sync --no-dev`` into UV_PROJECT_ENVIRONMENT; returns its python."""
    run([str(uv), "lock"], mod, env)
    run([str(uv), "sync", "--no-dev"], mod, env)
    return Path(env["UV_PROJECT_ENVIRONMENT"]) / "bin" / "python"


def load_in_venv(python: Path, env: dict[str, str], schema: Path, module_file: Path) -> dict[str, object]:
    """Run runtime_load.py in the module's venv: the runtime's load + ``--register``, against the FakeEngine."""
    argv = [
        str(python),
        "-P",
        str(Path(__file__).with_name("runtime_load.py")),
        str(schema),
        str(Path(__file__).parent),
    ]
    done = run(argv, python.parent, {**env, "DAGGER_MODULE_FILE": str(module_file)}, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def relock(work: Path) -> Path:
    """Write ci/uv.lock as the runtime's ``uv lock`` writes it (the SDK from the mirror if present, else PyPI)."""
    cache = cache_dir()
    sdk = sdk_from_mirror(work) if (MIRROR / "HEAD").is_file() else sdk_from_pypi(cache, work)
    mod = module_dir(work, sdk, lock=True)
    run([str(uv_tool(cache)), "lock"], mod, runtime_env(cache, work / "opt-venv"))
    shutil.copyfile(mod / "uv.lock", REPO / "ci" / "uv.lock")
    return REPO / "ci" / "uv.lock"


if __name__ == "__main__":  # python -m tests.dagger.module_runtime: regenerate ci/uv.lock
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(f"wrote {relock(Path(tmp))} with uv {UV_VERSION}")
