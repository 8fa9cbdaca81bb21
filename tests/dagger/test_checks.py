"""`lint` and `test`: ruff and pytest over the source, the JUnit report as a File."""

from __future__ import annotations

from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import answer_entries, answer_exec
from .conftest import REPO, Caller
from .engine import FakeEngine


def test_lint_runs_ruff_in_the_image_with_the_dev_extra(call: Caller, engine: FakeEngine) -> None:
    g = engine.graph(call("lint"))
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "dev"]
    assert g.execs()[-1] == ["ruff", "check", "."]
    assert g.fields()[-1] == "withExec"


def test_test_installs_the_source_then_returns_pytests_junit_file(call: Caller, engine: FakeEngine) -> None:
    answer_entries(engine, ["pyproject.toml", "mlci", "tests"])
    result = call("test")
    assert engine.type_of(result) == "File"
    g = engine.graph(result)
    assert ["python", "requirements.py", "pyproject.toml", "test"] in g.execs()  # after the apt layer
    install, pytest_argv = g.after("withMountedDirectory").execs()
    assert install == ["pip", "install", "-c", "/opt/mlci/constraints.txt", "-e", "."]
    assert pytest_argv[:3] == ["python", "-m", "pytest"]
    junit = next(a.split("=", 1)[1] for a in pytest_argv if a.startswith("--junitxml="))
    assert g.steps[-1].field == "file" and g.steps[-1].args == {"path": junit}


def makefile_apt_packages() -> list[str]:
    """The Debian packages `make test` installs (APT_PACKAGES in the Makefile)."""
    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if x.startswith("APT_PACKAGES ?="))
    return line.split("=", 1)[1].split()


def test_the_test_container_installs_the_debian_packages_the_suite_starts(
    call: Caller, engine: FakeEngine
) -> None:
    """mlci's suite starts /usr/bin/docker-registry and runs skopeo, git and qemu-x86_64, which the slim image lacks.
    The apt lists and archives are cache volumes; the image's docker-clean hook (which empties them after
    every install) is removed first, as Docker's guide to cache mounts for apt does."""
    g = engine.graph(call("test"))
    executor_tools = {"mmdebstrap", "bubblewrap", "iproute2"}  # tests/dagger/executor's, not the suite's
    wanted = [p for p in makefile_apt_packages() if p not in executor_tools]
    assert wanted == ["git", "docker-registry", "skopeo", "qemu-user"]
    (install,) = [e for e in g.execs() if "apt-get install" in " ".join(e)]
    assert "--no-install-recommends" in install[-1] and install[-1].split()[-len(wanted) :] == wanted
    assert "apt-get update" in install[-1]
    caches = {
        c["path"]: engine.graph(c["cache"]).one("cacheVolume")["key"] for c in g.calls("withMountedCache")
    }
    assert {"/var/cache/apt", "/var/lib/apt/lists"} <= set(caches)
    clean = next(i for i, e in enumerate(g.execs()) if "/etc/apt/apt.conf.d/docker-clean" in " ".join(e))
    assert clean < g.execs().index(install)
    # Before the source is mounted: a source edit leaves the apt layer cached.
    assert g.fields().index("withMountedDirectory") > g.fields().index("withMountedCache")
    assert {"name": "DEBIAN_FRONTEND", "value": "noninteractive"} in g.calls("withEnvVariable")


def test_the_debian_packages_are_an_argument(call: Caller, engine: FakeEngine, registered: Any) -> None:
    _, functions, _ = registered
    assert functions["test"].args["system_packages"].default == ["git", "docker-registry", "skopeo", "qemu-user"]
    g = engine.graph(call("test", system_packages=["graphviz"]))
    (install,) = [e for e in g.execs() if "apt-get install" in " ".join(e)]
    assert install[-1].endswith("--no-install-recommends graphviz")
    g = engine.graph(call("test", system_packages=[]))
    assert not [e for e in g.execs() if "apt-get" in " ".join(e)]
    with pytest.raises(FunctionError, match=r"system_packages: 'git; rm -rf /' is not a Debian package name"):
        call("test", system_packages=["git; rm -rf /"])


def test_a_repository_without_a_pyproject_is_tested_without_installing_it(
    call: Caller, engine: FakeEngine
) -> None:
    answer_entries(engine, ["tests", "mlci.toml", "data.csv"])
    g = engine.graph(call("test"))
    assert g.after("withMountedDirectory").execs()[0][:3] == ["python", "-m", "pytest"]


@pytest.mark.parametrize("marker", ["pyproject.toml", "setup.py"])
def test_a_python_project_is_installed_with_build_isolation(
    call: Caller, engine: FakeEngine, marker: str
) -> None:
    """Any build backend (hatchling, poetry-core, flit...): pip's build isolation installs it; the
    versions mlci pins stay pinned (constraints.txt)."""
    answer_entries(engine, [marker, "tests"])
    g = engine.graph(call("test"))
    install, pytest_argv = g.after("withMountedDirectory").execs()
    assert install == ["pip", "install", "-c", "/opt/mlci/constraints.txt", "-e", "."]
    assert pytest_argv[:3] == ["python", "-m", "pytest"]


def test_failing_tests_fail_the_check_with_pytests_output(call: Caller, engine: FakeEngine) -> None:
    """pytest runs with expect=ANY (the junit report of a failed run is still read by `pipeline
    --keep-going`); `test` itself fails on a non-zero exit."""
    answer_exec(
        engine, ["python", "-m", "pytest"], 1, stdout="FAILED tests/test_x.py::test_y - assert 1 == 2"
    )
    with pytest.raises(FunctionError, match=r"(?s)pytest failed \(exit 1\).*test_y - assert 1 == 2"):
        call("test")
