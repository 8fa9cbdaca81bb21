"""`train`: the three stage commands `mlci run` runs in-process, in one container, returning the artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .cli_contract import assert_cli_accepts
from .conftest import REPO, Caller
from .engine import FakeEngine
from .replay import MLCI, make_empty_dirs, run_mlci

EXAMPLE = REPO / "examples" / "breast_cancer"


def stage_argv(call: Caller, engine: FakeEngine, config: str = "mlci.toml") -> tuple[list[list[str]], str]:
    result = call("train", ctor={"config": config})
    assert engine.type_of(result) == "Directory"
    g = engine.graph(result)
    assert g.steps[-1].field == "directory"
    return g.after("withWorkdir").execs(), g.steps[-1].args["path"]


def test_train_runs_train_export_evaluate_and_returns_the_evaluate_output(call: Caller, engine: FakeEngine) -> None:
    argvs, exported = stage_argv(call, engine, "models/churn/mlci.toml")
    assert [a[:2] for a in argvs] == [["mlci", "train"], ["mlci", "export"], ["mlci", "evaluate"]]
    train, export, evaluate = (assert_cli_accepts(a) for a in argvs)
    assert {train["config_path"], export["config_path"], evaluate["config_path"]} == {"models/churn/mlci.toml"}
    # Each stage reads the directory the previous one wrote; evaluate's output is what the function returns.
    assert export["train_dir"] == evaluate["train_dir"] == train["out"]
    assert evaluate["export_dir"] == export["out"]
    assert evaluate["out"] == exported


def test_stage_outputs_stay_outside_the_source(call: Caller, engine: FakeEngine) -> None:
    argvs, exported = stage_argv(call, engine)
    outs = [assert_cli_accepts(a)["out"] for a in argvs]
    assert all(not str(o).startswith("/src") for o in [*outs, exported])


@pytest.mark.skipif(not MLCI.exists(), reason=f"the mlci console script is not installed at {MLCI}")
def test_the_container_commands_give_the_digest_mlci_run_gives(call: Caller, engine: FakeEngine, tmp_path: Path) -> None:
    """The laptop-vs-CI claim without an engine: replay the graph's argv locally, compare with `mlci run`."""
    result = call("train")
    argvs, exported = stage_argv(call, engine)
    src, ref = tmp_path / "src", tmp_path / "ref"
    for d in (src, ref):
        shutil.copytree(EXAMPLE, d, ignore=shutil.ignore_patterns(".mlci"))
    paths = {"/src": src, "/mlci/out": tmp_path / "out"}
    make_empty_dirs(engine.graph(result), paths)
    for argv in argvs:
        done = run_mlci(argv, paths, cwd=src)
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    artifact = tmp_path / "out" / Path(exported).relative_to("/mlci/out")
    digest = json.loads((artifact / "manifest.json").read_text())["digest"]

    done = run_mlci(["mlci", "run", "--config", "mlci.toml", "--until", "evaluate", "--json"], {}, cwd=ref)
    assert done.returncode == 0, done.stderr
    local = json.loads(done.stdout)
    assert local["digest"] == digest
    assert sorted(p.name for p in artifact.iterdir()) == sorted(p.name for p in Path(local["artifact"]).iterdir())
