"""`mlci init`: a loadable mlci.toml with the schema inferred from data, the CI configs, no silent overwrite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlci import __version__
from mlci.cli import cli
from mlci.config import load_config
from mlci.scaffold import CI_FILES, MODULE_REPOSITORY, render_ci

from .conftest import mixed_frame

REPO = Path(__file__).resolve().parents[1]


def init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["init", *args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "Churn Model_2"
    (root / "data").mkdir(parents=True)
    mixed_frame(200).to_csv(root / "data" / "customers.csv", index=False)
    return root


def test_writes_a_config_that_loads_with_the_inferred_schema_and_both_ci_configs(repo: Path) -> None:
    code, out = init(str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo))
    assert code == 0, out
    config = load_config(repo / "mlci.toml")
    assert config.name == "churn-model-2" and config.task == "classification"
    assert config.data.path == repo / "data" / "customers.csv" and config.data.target == "churn"
    assert dict(config.data.features) == {
        "age": "numeric",
        "income": "numeric",
        "plan": "categorical",
        "region": "categorical",
        "spend": "numeric",
    }
    module = f"{MODULE_REPOSITORY}@v{__version__}"
    for path, name in CI_FILES.values():
        assert (repo / path).read_text() == render_ci(name, module=module, config="mlci.toml", checks=False)
    assert "wrote mlci.toml, .github/workflows/mlci.yml, .gitlab-ci.yml" in out
    assert f"CI calls the mlci Dagger module {module}" in out and "lint + test off" in out


def test_the_scaffolded_config_trains(repo: Path) -> None:
    assert (
        init(str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "none")[0]
        == 0
    )
    result = CliRunner().invoke(
        cli,
        ["train", "--config", str(repo / "mlci.toml"), "--out", str(repo / "out")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (repo / "out" / "estimator.skops").is_file()


def test_a_column_added_to_drop_is_left_out_though_init_listed_it(repo: Path) -> None:
    """init lists every column in [data.features]; the user then drops 'spend' (a second target, which
    leaks the answer). drop wins: the trained schema has no 'spend' (it was silently kept before)."""
    code, out = init(
        str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "none"
    )
    assert code == 0, out
    config_path = repo / "mlci.toml"
    text = re.sub(r"(?m)^drop = .*\n", "", config_path.read_text())
    config_path.write_text(text.replace('target = "churn"\n', 'target = "churn"\ndrop = ["spend"]\n', 1))
    assert "spend" in load_config(config_path).data.features  # still listed there, as init wrote it
    result = CliRunner().invoke(
        cli, ["train", "--config", str(config_path), "--out", str(repo / "out")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    schema = json.loads((repo / "out" / "train.json").read_text())["schema"]
    assert [f["name"] for f in schema["features"]] == ["age", "income", "plan", "region"]


@pytest.mark.parametrize(
    ("target", "task"), [("spend", "regression"), ("churn", "classification"), ("age", "regression")]
)
def test_the_task_follows_the_target(repo: Path, target: str, task: str) -> None:
    assert (
        init(str(repo / "data" / "customers.csv"), "--target", target, "--dir", str(repo), "--ci", "none")[0]
        == 0
    )
    assert load_config(repo / "mlci.toml").task == task


def test_integer_codes_with_few_values_are_classes(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("x,label\n" + "".join(f"{i},{i % 3}\n" for i in range(30)))
    assert init(str(tmp_path / "d.csv"), "--target", "label", "--dir", str(tmp_path), "--ci", "none")[0] == 0
    assert load_config(tmp_path / "mlci.toml").task == "classification"


def test_refuses_to_overwrite_without_force_and_writes_nothing(repo: Path) -> None:
    (repo / ".gitlab-ci.yml").write_text("mine\n")
    code, out = init(str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo))
    # Bad input, exit 2, as the README's command table says for init (it was click's default 1).
    assert code == 2 and "Not overwriting .gitlab-ci.yml" in out and "--force" in out
    assert (repo / ".gitlab-ci.yml").read_text() == "mine\n"
    assert not (repo / "mlci.toml").exists() and not (repo / ".github").exists()
    assert not (repo / ".gitignore").exists()
    code, out = init(str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--force")
    assert code == 0, out
    assert (
        "mlci.toml" in (repo / ".gitlab-ci.yml").read_text()
        and "mine" not in (repo / ".gitlab-ci.yml").read_text()
    )


def test_gitignore_gets_the_workspace_and_the_prediction_log(repo: Path) -> None:
    """init writes a .gitignore so that `git add .` after `mlci run` commits no stage cache, artifacts,
    local registry or prediction log."""
    code, out = init(
        str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "none"
    )
    assert code == 0, out
    lines = (repo / ".gitignore").read_text().splitlines()
    assert {".mlci/", "/predictions/", "/monitor-state/"} <= set(lines)
    assert ".gitignore" in out


def test_gitignore_is_appended_to_without_duplicating_lines(repo: Path) -> None:
    (repo / ".gitignore").write_text("__pycache__/\n.mlci/\n*.log")  # no final newline
    args = (str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "none")
    assert init(*args)[0] == 0
    first = (repo / ".gitignore").read_text()
    lines = first.splitlines()
    assert lines[:3] == ["__pycache__/", ".mlci/", "*.log"]  # the user's lines, untouched
    assert (
        lines.count(".mlci/") == 1
        and lines.count("/predictions/") == 1
        and lines.count("/monitor-state/") == 1
    )
    code, out = init(*args, "--force")  # again: nothing to add
    assert code == 0, out
    assert (repo / ".gitignore").read_text() == first
    assert "already ignores" in out


def test_gitignore_that_is_not_a_file_is_refused(repo: Path) -> None:
    (repo / ".gitignore").mkdir()
    code, out = init(
        str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "none"
    )
    assert code == 2 and "'.gitignore'" in out and "not a file" in out
    assert not (repo / "mlci.toml").exists()


def test_only_the_chosen_vendors(repo: Path) -> None:
    assert (
        init(str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--ci", "github")[
            0
        ]
        == 0
    )
    assert (repo / ".github/workflows/mlci.yml").is_file() and not (repo / ".gitlab-ci.yml").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "chrun"], "has no column 'chrun'. Did you mean 'churn'?"),
        ([], "Which column is the target? Pass --target"),
        (["--target", "churn", "--dir", "/nonexistent/dir"], "'/nonexistent/dir' is not a directory"),
    ],
)
def test_usage_errors_say_what_to_do(repo: Path, args: list[str], message: str) -> None:
    if "--dir" not in args:
        args = [*args, "--dir", str(repo)]
    code, out = init(str(repo / "data" / "customers.csv"), *args)
    assert code == 2 and message in out


def test_data_must_exist_inside_the_repository(repo: Path, tmp_path: Path) -> None:
    code, out = init(str(repo / "data" / "missing.csv"), "--dir", str(repo))
    assert code == 2 and "does not exist" in out
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("a,target\n1,0\n")
    code, out = init(str(outside), "--dir", str(repo))
    assert code == 2 and "is outside" in out


def test_a_header_without_rows_or_only_a_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("a,target\n")
    code, out = init(str(tmp_path / "empty.csv"), "--dir", str(tmp_path))
    assert code == 2 and "no data rows" in out
    (tmp_path / "only.csv").write_text("target\n1\n0\n")
    code, out = init(str(tmp_path / "only.csv"), "--dir", str(tmp_path))
    assert code == 2 and "only the target column" in out
    assert not (tmp_path / "mlci.toml").exists()


def test_odd_column_names_survive_the_toml(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('"plan ""tier""",x y,target\nbasic,1,0\npro,2,1\nbasic,3,0\npro,4,1\n')
    code, out = init(str(tmp_path / "d.csv"), "--dir", str(tmp_path), "--ci", "none")
    assert code == 0, out
    assert dict(load_config(tmp_path / "mlci.toml").data.features) == {
        'plan "tier"': "categorical",
        "x y": "numeric",
    }


def test_the_repositorys_own_ci_configs_are_the_templates() -> None:
    """One source of truth: mlci's own CI is the template `mlci init` renders, for the module at '.'."""
    for path, name in CI_FILES.values():
        expected = render_ci(name, module=".", config="mlci.toml", checks=True)
        assert (REPO / path).read_text() == expected, (
            f"{path} differs from mlci/templates/{name} rendered for mlci"
        )


def ci_env(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(GitHub workflow env, GitLab variables) as written into ``root``."""
    github = yaml.safe_load((root / ".github/workflows/mlci.yml").read_text())["env"]
    return github, yaml.safe_load((root / ".gitlab-ci.yml").read_text())["variables"]


def test_the_module_is_a_pinned_reference_that_can_be_chosen(repo: Path) -> None:
    code, out = init(
        str(repo / "data" / "customers.csv"),
        "--target",
        "churn",
        "--dir",
        str(repo),
        "--module",
        "github.com/acme/mlci@v2.0.1",
    )
    assert code == 0, out
    github, gitlab = ci_env(repo)
    assert github["MLCI_MODULE"] == "${{ vars.MLCI_MODULE || 'github.com/acme/mlci@v2.0.1' }}"
    assert gitlab["MLCI_MODULE"] == "github.com/acme/mlci@v2.0.1"


def test_a_vendored_module_directory_is_accepted(repo: Path) -> None:
    (repo / "vendor" / "mlci").mkdir(parents=True)
    (repo / "vendor" / "mlci" / "dagger.json").write_text('{"name": "mlci"}')
    code, out = init(
        str(repo / "data" / "customers.csv"),
        "--target",
        "churn",
        "--dir",
        str(repo),
        "--module",
        "./vendor/mlci",
    )
    assert code == 0, out
    assert ci_env(repo)[1]["MLCI_MODULE"] == "./vendor/mlci"


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("github.com/acme/mlci", "is not pinned"),
        (".", "has no dagger.json"),
        ("./vendor/none", "has no dagger.json"),
        ("github.com/acme/mlci@v1 2", "a Dagger module address"),
        ("github.com/acme/'mlci'@v1", "a Dagger module address"),
        ("mlci@v1", "a Dagger module address"),
    ],
)
def test_a_module_that_would_point_at_nothing_is_refused(repo: Path, module: str, message: str) -> None:
    code, out = init(
        str(repo / "data" / "customers.csv"), "--target", "churn", "--dir", str(repo), "--module", module
    )
    assert code == 2 and message in out and "--module" in out, out
    assert not (repo / "mlci.toml").exists()


@pytest.mark.parametrize(
    ("project_file", "flag", "checks"),
    [
        (None, None, "false"),
        ("pyproject.toml", None, "true"),
        ("setup.py", None, "true"),
        (None, "--checks", "true"),
        ("pyproject.toml", "--no-checks", "false"),
    ],
)
def test_checks_default_to_whether_the_repository_is_a_python_project(
    repo: Path, project_file: str | None, flag: str | None, checks: str
) -> None:
    if project_file:
        (repo / project_file).write_text("")
    args = [
        str(repo / "data" / "customers.csv"),
        "--target",
        "churn",
        "--dir",
        str(repo),
        *([flag] if flag else []),
    ]
    code, out = init(*args)
    assert code == 0, out
    github, gitlab = ci_env(repo)
    assert (
        github["MLCI_CHECKS"] == f"${{{{ vars.MLCI_CHECKS || '{checks}' }}}}"
        and gitlab["MLCI_CHECKS"] == checks
    )
    assert (
        github["MLCI_CONFIG"] == "${{ vars.MLCI_CONFIG || 'mlci.toml' }}"
        and gitlab["MLCI_CONFIG"] == "mlci.toml"
    )


def test_importing_the_scaffold_loads_no_ml_library() -> None:
    code = "import sys, mlci.scaffold; print([m for m in ('pandas', 'sklearn', 'onnxruntime') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
