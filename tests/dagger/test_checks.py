"""`lint` and `test`: ruff and pytest over the source, the JUnit report as a File."""

from __future__ import annotations

from .conftest import Caller
from .engine import FakeEngine


def test_lint_runs_ruff_in_the_image_with_the_dev_extra(call: Caller, engine: FakeEngine) -> None:
    g = engine.graph(call("lint"))
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "dev"]
    assert g.execs()[-1] == ["ruff", "check", "."]
    assert g.fields()[-1] == "withExec"


def test_test_installs_the_source_then_returns_pytests_junit_file(call: Caller, engine: FakeEngine) -> None:
    result = call("test")
    assert engine.type_of(result) == "File"
    g = engine.graph(result)
    assert g.execs()[0] == ["python", "requirements.py", "pyproject.toml", "test"]
    install, pytest_argv = g.after("withMountedDirectory").execs()
    assert install == ["pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
    assert pytest_argv[:3] == ["python", "-m", "pytest"]
    junit = next(a.split("=", 1)[1] for a in pytest_argv if a.startswith("--junitxml="))
    assert g.steps[-1].field == "file" and g.steps[-1].args == {"path": junit}
