"""The repository-root mlci.toml: what `dagger check` (which passes no constructor flags, so --config is
its default 'mlci.toml': cmd/dagger/checks.go) trains, smoke-tests and gates in this repository."""

from __future__ import annotations

import subprocess
import tomllib

from mlci.config import load_config

from .conftest import REPO

EXAMPLE = REPO / "examples" / "breast_cancer"


def test_the_root_config_is_the_bundled_example_with_its_data_path() -> None:
    root = tomllib.loads((REPO / "mlci.toml").read_text())
    example = tomllib.loads((EXAMPLE / "mlci.toml").read_text())
    assert root["data"].pop("path") == "examples/breast_cancer/data.csv"
    example["data"].pop("path")
    assert root == example


def test_it_loads_and_names_committed_data(tmp_path) -> None:
    config = load_config(REPO / "mlci.toml", workspace=tmp_path / "ws")
    assert config.data.path == (EXAMPLE / "data.csv").resolve()
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "examples/breast_cancer/data.csv"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert tracked.returncode == 0, "data.csv is not committed: the uploaded source would not have it"
