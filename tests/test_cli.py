"""The `mlci` command line: help, exit codes, --json, and every bad input with a clear message and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlci.cli import cli

from .conftest import ProjectFactory, mixed_frame


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def store_is_empty(config: Path) -> bool:
    ws = config.parent / ".mlci"
    return not (ws / "artifacts").exists() or not any((ws / "artifacts").iterdir())


def test_help_lists_stages_without_importing_ml_libraries() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from mlci.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); print(r.output); "
        "heavy = [m for m in ('sklearn', 'onnxruntime', 'pandas', 'skl2onnx', 'starlette') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for stage in ("run", "train", "export", "evaluate", "runs", "verify"):
        assert f"  {stage} " in out
    assert "HEAVY []" in out


@pytest.mark.parametrize("command", ["run", "train", "export", "evaluate", "runs", "verify"])
def test_every_command_has_help(command: str) -> None:
    code, out = invoke(command, "--help")
    assert code == 0 and "Usage:" in out


def test_run_prints_artifact_and_metrics_then_json(example_project: Path) -> None:
    code, out = invoke("run", "--config", str(example_project))
    assert code == 0, out
    assert "artifact  sha256:" in out and "accuracy=" in out and "[mlci] train: ok" in out
    code, out = invoke("run", "--config", str(example_project), "--json")
    assert code == 0
    payload = json.loads(out[out.index("{") :])
    assert payload["status"] == "ok"
    assert [(s["stage"], s["cache_hit"]) for s in payload["stages"]] == [
        ("train", True), ("export", True), ("evaluate", True), ("smoke", True), ("gate", True), ("push", True)
    ]
    assert payload["verdict"]["passed"] and payload["verdict"]["first_run"]
    assert Path(payload["artifact"], "model.onnx").is_file()
    code, out = invoke("runs", "--config", str(example_project), "--json")
    assert code == 0 and json.loads(out)["total"] == 2
    code, out = invoke("verify", payload["artifact"])
    assert code == 0 and payload["digest"] in out


def test_stages_one_by_one_give_the_same_digest_as_run(example_project: Path, tmp_path: Path) -> None:
    cfg = str(example_project)
    assert invoke("train", "-c", cfg, "--out", str(tmp_path / "t"))[0] == 0
    assert invoke("export", "-c", cfg, "--train", str(tmp_path / "t"), "--out", str(tmp_path / "e"))[0] == 0
    code, out = invoke("evaluate", "-c", cfg, "--train", str(tmp_path / "t"), "--export", str(tmp_path / "e"), "--out", str(tmp_path / "a"), "--json")
    assert code == 0, out
    digest = json.loads(out)["digest"]
    code, out = invoke("run", "-c", cfg, "--json")
    assert json.loads(out[out.index("{") :])["digest"] == digest


def test_stage_refuses_a_non_empty_out_dir(example_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, text = invoke("train", "-c", str(example_project), "--out", str(out))
    assert code == 2 and "already exists and is not empty" in text
    assert (out / "keep.txt").read_text() == "precious"


def test_verify_detects_a_tampered_artifact(example_project: Path) -> None:
    code, out = invoke("run", "-c", str(example_project), "--json")
    artifact = Path(json.loads(out[out.index("{") :])["artifact"])
    profile = artifact / "profile.json"
    profile.write_text(profile.read_text().replace('"rows"', '"rowz"'))
    code, out = invoke("verify", str(artifact))
    assert code == 2 and "profile.json" in out and "corrupted" in out


# --- bad input: a clear message, exit 2, nothing in the artifact store -------------------------------


def bad_input(config: Path, *expected: str) -> None:
    code, out = invoke("run", "--config", str(config))
    assert code == 2, out
    for text in expected:
        assert text in out, out
    assert store_is_empty(config)


def test_missing_config_file(tmp_path: Path) -> None:
    code, out = invoke("run", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "does not exist" in out and "mlci init" in out


def test_missing_data_file(make_project: ProjectFactory) -> None:
    config = make_project()
    (config.parent / "data.csv").unlink()
    bad_input(config, "does not exist", "[data] path")


def test_empty_data_file(make_project: ProjectFactory) -> None:
    bad_input(make_project(csv_text=""), "is empty")


def test_header_only_data_file(make_project: ProjectFactory) -> None:
    bad_input(make_project(csv_text="age,plan,churn\n"), "no data rows")


def test_target_column_absent(make_project: ProjectFactory) -> None:
    bad_input(make_project(target="churned", data_extra=""), "'churned' is not in", "Did you mean 'churn'?")


def test_text_in_numeric_column(make_project: ProjectFactory) -> None:
    frame = mixed_frame()
    frame["income"] = frame["income"].astype(object)
    frame.loc[41, "income"] = "lots"
    config = make_project(frame=frame, extra="", data_extra='drop = ["spend"]\n[data.features]\nage = "numeric"\nincome = "numeric"\nplan = "categorical"')
    bad_input(config, "'income'", "data row 42", "'lots'", "categorical")


def test_class_in_only_one_split(make_project: ProjectFactory) -> None:
    frame = mixed_frame()
    frame.loc[5, "churn"] = "maybe"
    bad_input(make_project(frame=frame), "Class 'maybe'", "in both")


def test_unknown_estimator_class(make_project: ProjectFactory) -> None:
    bad_input(make_project('class = "sklearn.linear_model.LogisticRegresion"'), "has no 'LogisticRegresion'", "Did you mean")


def test_unknown_estimator_module(make_project: ProjectFactory) -> None:
    bad_input(make_project('class = "sklearn.linaer_model.LogisticRegression"'), "cannot be imported")


def test_estimator_param_not_accepted(make_project: ProjectFactory) -> None:
    bad_input(
        make_project('class = "sklearn.linear_model.LogisticRegression"\nparams = { max_iters = 10 }'),
        "does not accept the parameter 'max_iters'",
        "Did you mean 'max_iter'?",
    )


def test_estimator_param_value_invalid(make_project: ProjectFactory) -> None:
    bad_input(make_project('class = "sklearn.linear_model.LogisticRegression"\nparams = { C = -1.0 }'), "Fitting LogisticRegression failed", "'C'")


def test_estimator_task_mismatch(make_project: ProjectFactory) -> None:
    bad_input(make_project('class = "sklearn.linear_model.Ridge"'), "is not a classifier")


def test_malformed_toml(make_project: ProjectFactory) -> None:
    config = make_project()
    config.write_text(config.read_text() + "\n[estimator\nclass = 1\n")
    bad_input(config, "not valid TOML")


def test_unknown_config_key_suggests(make_project: ProjectFactory) -> None:
    config = make_project(extra="\n[export]\nabs_tolerence = 1e-4\n")
    bad_input(config, "Unknown key 'abs_tolerence' in [export]", "Did you mean 'abs_tolerance'?")


def test_unconvertible_estimator_names_estimator_and_converter_error(make_project: ProjectFactory) -> None:
    config = make_project('class = "sklearn.ensemble.HistGradientBoostingClassifier"\nparams = { max_iter = 10 }')
    code, out = invoke("run", "--config", str(config))
    assert code == 2, out
    assert "skl2onnx cannot convert HistGradientBoostingClassifier" in out
    assert "Traceback" not in out
    assert store_is_empty(config)


def test_parity_failure_exits_1_and_names_rows(make_project: ProjectFactory) -> None:
    config = make_project(
        'class = "sklearn.ensemble.RandomForestClassifier"\nparams = { n_estimators = 5 }',
        extra="\n[export]\nabs_tolerance = 0.0\n",
    )
    code, out = invoke("run", "--config", str(config))
    if "parity failed" not in out:
        pytest.fail(f"expected a parity failure at zero tolerance, got exit {code}: {out}")
    assert code == 1 and "Worst rows: row " in out
    assert store_is_empty(config)


def test_push_on_a_warm_run_says_the_artifact_is_already_there(example_project: Path) -> None:
    """Issue 13 item 12: a warm run's push is a cache hit when the registry already holds it all, and says so.

    When the `candidate` tag has moved on since (another artifact was pushed), the warm run moves it
    back and says it pushed; --no-cache pushes again whatever the registry holds.
    """
    from mlci.config import load_config
    from mlci.pipeline import open_registry
    from mlci.registry import tag_digest

    cfg = str(example_project)
    code, out = invoke("run", "-c", cfg)
    assert code == 0 and "[mlci] push: ok" in out and "pushed    candidate →" in out, out
    code, out = invoke("run", "-c", cfg, "--json")
    assert code == 0, out
    payload = json.loads(out[out.index("{\n") :])
    push = next(s for s in payload["stages"] if s["stage"] == "push")
    assert push["cache_hit"] and payload["release"]["push"]["written"] is False, payload
    assert f"[mlci] push: ok (cache hit) — already in the registry as candidate: {payload['digest'][:19]}" in out, out
    code, out = invoke("run", "-c", cfg)
    assert code == 0 and "pushed    candidate →" in out and "(already there, nothing written)" in out, out

    original = example_project.read_text()
    example_project.write_text(original.replace("C = 1.0", "C = 0.5"))
    assert invoke("run", "-c", cfg)[0] == 0  # another artifact takes the candidate tag
    store = open_registry(load_config(example_project))
    assert tag_digest(store, "candidate") != payload["digest"]
    example_project.write_text(original)
    code, out = invoke("run", "-c", cfg)  # every model stage from the cache, but the tag must move back
    assert code == 0 and "[mlci] push: ok" in out and "pushed    candidate →" in out, out
    assert tag_digest(store, "candidate") == payload["digest"]
    code, out = invoke("run", "-c", cfg, "--no-cache")
    assert code == 0 and "[mlci] push: ok" in out, out
