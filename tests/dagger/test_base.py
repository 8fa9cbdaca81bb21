"""`base`: the image, the pip cache volume, and the dependency layer built before any source is copied in."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, Caller
from .engine import FakeEngine


def load_requirements_script():  # the in-container helper, loaded as the module file it is
    spec = importlib.util.spec_from_file_location("requirements", REPO / "ci" / "src" / "mlci_dagger" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_base_starts_from_the_pinned_slim_image_with_a_pip_cache_volume(call: Caller, engine: FakeEngine) -> None:
    from mlci_dagger.main import PYTHON_IMAGE

    g = engine.graph(call("base"))
    assert g.one("from") == {"address": PYTHON_IMAGE}
    (cache,) = g.calls("withMountedCache")
    assert cache["path"] == "/root/.cache/pip"
    assert engine.graph(cache["cache"]).one("cacheVolume") == {"key": "mlci-pip"}
    assert "PIP_INDEX_URL" not in [c["name"] for c in g.calls("withEnvVariable")]


def test_image_and_package_index_are_configurable_for_offline_use(call: Caller, engine: FakeEngine) -> None:
    ctor = {"python_image": "mirror.internal/python:3.11-slim", "index_url": "https://pypi.internal/simple"}
    g = engine.graph(call("base", ctor=ctor))
    assert g.one("from") == {"address": "mirror.internal/python:3.11-slim"}
    assert {"name": "PIP_INDEX_URL", "value": "https://pypi.internal/simple"} in g.calls("withEnvVariable")


def test_dependencies_install_from_pyproject_alone_before_the_source_arrives(call: Caller, engine: FakeEngine) -> None:
    g = engine.graph(call("base", extras=["test"]))
    fields = g.fields()
    install = ["pip", "install", "-r", "requirements.txt", "-c", "constraints.txt"]
    deps_install = g.execs().index(install)
    # The dependency layer sees only mlci's pyproject.toml and the version pins (constraints.txt, the same
    # file `make` installs with, so the container's artifact digest equals the laptop's) and the script.
    before = g.before("withDirectory")
    assert [c["path"] for c in before.calls("withFile")] == ["/opt/mlci/pyproject.toml", "/opt/mlci/constraints.txt"]
    assert [engine.graph(c["source"]).one("file") for c in before.calls("withFile")] == [
        {"path": "pyproject.toml"}, {"path": "constraints.txt"}
    ]
    assert before.execs() == [["python", "requirements.py", "pyproject.toml", "test"], install]
    assert deps_install == 1
    # Then mlci's tree, installed without touching dependencies (no resolver, no network)...
    mlci_tree, out_dir = g.calls("withDirectory")
    assert mlci_tree["path"] == "/opt/mlci"
    assert g.execs()[2] == ["pip", "install", "--no-deps", "--no-build-isolation", "."]
    # An empty output directory (the stage commands write below it)...
    assert out_dir["path"] == "/mlci/out" and [s.field for s in engine.chain_of(out_dir["source"])] == ["directory"]
    # ...and only then the model source, mounted (not copied into the image) as the workdir.
    assert fields.index("withMountedDirectory") > len(fields) - 1 - fields[::-1].index("withDirectory")
    assert g.one("withMountedDirectory")["path"] == "/src" and g.calls("withWorkdir")[-1] == {"path": "/src"}


def test_the_requirements_script_reads_build_requires_dependencies_and_extras() -> None:
    script = load_requirements_script()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = script.requirements(pyproject, ["test"])
    assert reqs[: len(pyproject["build-system"]["requires"])] == pyproject["build-system"]["requires"]
    assert set(pyproject["project"]["dependencies"]) <= set(reqs)
    assert set(pyproject["project"]["optional-dependencies"]["test"]) <= set(reqs)
    assert not set(pyproject["project"]["optional-dependencies"]["dev"]) & set(reqs) - set(
        pyproject["project"]["optional-dependencies"]["test"]
    )


def test_the_requirements_script_names_the_extras_that_exist() -> None:
    script = load_requirements_script()
    with pytest.raises(SystemExit, match=r"no extra 'tset'; it has \['a', 'b'\]"):
        script.requirements({"project": {"optional-dependencies": {"a": [], "b": []}}}, ["tset"])


def test_the_script_the_container_gets_is_the_file_in_the_module(call: Caller, engine: FakeEngine) -> None:
    g = engine.graph(call("base"))
    new_file = g.one("withNewFile")
    assert new_file["path"] == "/opt/mlci/requirements.py"
    assert new_file["contents"] == (REPO / "ci" / "src" / "mlci_dagger" / "requirements.py").read_text()
    assert g.calls("withExec")[0]["redirectStdout"] == "requirements.txt"


def test_mlci_source_ignores_everything_pip_does_not_read() -> None:
    from mlci_dagger.main import MLCI_SOURCE_IGNORE, SOURCE_IGNORE

    assert "**/.mlci" in SOURCE_IGNORE  # the whole list is checked in test_ignore.py
    kept = [p[1:] for p in MLCI_SOURCE_IGNORE if p.startswith("!")]
    assert MLCI_SOURCE_IGNORE[0] == "**"
    # Everything setuptools needs to build mlci: pyproject, the readme it names, each package directory.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]} | {
        f"{d}/**" for d in pyproject["tool"]["setuptools"]["package-dir"].values()
    }
    assert needed <= set(kept), sorted(needed - set(kept))
    assert all(Path(REPO, p.removesuffix("/**")).exists() for p in kept)


def test_extras_of_the_constructor_are_installed_in_every_stage_container(call: Caller, engine: FakeEngine) -> None:
    """A Parquet dataset needs mlci's parquet extra (pyarrow) in train, smoke and gate, as it does locally."""
    g = engine.graph(call("base", ctor={"extras": ["parquet"]}))
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "parquet"]
    g = engine.graph(call("base", ctor={"extras": ["parquet"]}, extras=["test"]))
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "test", "parquet"]
    g = engine.graph(call("train", ctor={"extras": ["parquet"]}))
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "parquet"]


def test_the_default_image_is_pinned_by_digest_and_overridable(registered: Any) -> None:
    from mlci_dagger import main

    _, _, ctor = registered
    assert ctor.args["python_image"].default == main.PYTHON_IMAGE
    if main.PYTHON_IMAGE_DIGEST:
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", main.PYTHON_IMAGE)
    else:
        assert main.PYTHON_IMAGE == "python:3.11-slim-bookworm"


def test_the_image_digest_is_filled_in() -> None:
    from mlci_dagger import main

    assert re.fullmatch(r"sha256:[0-9a-f]{64}", main.PYTHON_IMAGE_DIGEST)


def test_the_runtime_requirements_leave_out_build_tools_and_the_named_distributions() -> None:
    from mlci_dagger.main import SERVING_DROPS

    script = load_requirements_script()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = script.runtime_requirements(pyproject, sorted(SERVING_DROPS))
    names = {script.dist_name(r) for r in reqs}
    assert not names & set(SERVING_DROPS) and "setuptools" not in names
    assert {"pandas", "onnxruntime", "uvicorn", "numpy", "scipy"} <= names
    with pytest.raises(SystemExit, match=r"no dependency 'sklearn'"):
        script.runtime_requirements(pyproject, ["sklearn"])
