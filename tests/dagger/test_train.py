"""`train`: the three stage commands `mlci run` runs in-process, in one container, returning the artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .cli_contract import assert_cli_accepts
from .conftest import REPO, Caller
from .engine import FakeEngine
from .replay import MLCI, make_empty_dirs, run_mlci
from .test_gate import answer_gate
from .test_publish import publish

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


# -- the platform the artifact is built on ----------------------------------------------------------------


def training_platforms(engine: FakeEngine) -> list[Any]:
    """The `platform` of the `container` step that starts every training chain the module sent.

    core/schema/container.go `container(platform:)`: a missing argument is the engine's native platform
    (``parent.Platform()``), and `from` then resolves the image for the container's platform (ResolveImageConfig
    with ``platform.Spec()``), so the platform given here is the one the three stage commands execute as.
    """
    found = []
    for _, chain in engine.objects.values():
        execs = [s.args["args"] for s in chain if s.field == "withExec"]
        if ["mlci", "train"] in [a[:2] for a in execs]:
            assert chain[0].field == "container", chain[0]
            assert [a[:2] for a in execs].count(["mlci", "train"]) == 1
            found.append(chain[0].args.get("platform"))
    assert found, "no training container was sent"
    return found


def test_train_runs_on_linux_amd64_unless_told_otherwise(call: Caller, engine: FakeEngine) -> None:
    """train → export → evaluate in one container on linux/amd64: an arm64 laptop (Apple silicon) or runner
    (Graviton) builds the artifact x86-64 CI builds, bit for bit, instead of its own arm64 bits."""
    g = engine.graph(call("train"))
    assert g.steps[0].field == "container" and g.steps[0].args == {"platform": "linux/amd64"}
    assert [a[:2] for a in g.execs()][-3:] == [["mlci", "train"], ["mlci", "export"], ["mlci", "evaluate"]]
    assert g.fields().count("container") == 1  # every stage in that one container: nothing starts over elsewhere


def test_train_platform_is_overridable(call: Caller, engine: FakeEngine) -> None:
    g = engine.graph(call("train", platform="linux/arm64"))
    assert g.steps[0].args == {"platform": "linux/arm64"}
    assert training_platforms(engine) == ["linux/arm64"]


def test_train_is_registered_with_a_platform_flag_defaulting_to_linux_amd64(registered: Any) -> None:
    """`dagger call train --platform=linux/arm64`: a Platform argument is read by the CLI's platformValue
    (cmd/dagger/flags.go; `current` is the CLI host's platform) and parsed by the engine (core/platform.go)."""
    _, functions, _ = registered
    arg = functions["train"].args["platform"]
    assert arg.type == "Platform!" and arg.default == "linux/amd64"
    for name in ("smoke", "gate", "gate_report", "publish", "serving_image", "monitor_image", "pipeline"):
        arg = functions[name].args["train_platform"]
        assert arg.type == "Platform!" and arg.default == "linux/amd64", name


@pytest.mark.parametrize("bad", ["darwin/arm64", "arm64", "linux", "Linux/AMD64", "linux/amd64/v2/x", ""])
def test_a_platform_the_python_image_cannot_run_as_is_refused(call: Caller, bad: str) -> None:
    from dagger.mod._exceptions import FunctionError

    with pytest.raises(FunctionError, match=r"is not a Linux platform.*linux/<arch>\[/<variant>\], e\.g\. linux/amd64"):
        call("train", platform=bad)


def _smoke(call: Caller, engine: FakeEngine, **args: Any) -> None:
    call("smoke", **args)


def _gate(call: Caller, engine: FakeEngine, **args: Any) -> None:
    answer_gate(engine)
    call("gate", production="none", **args)


def _gate_report(call: Caller, engine: FakeEngine, **args: Any) -> None:
    answer_gate(engine)
    call("gate_report", production="none", **args)


def _pipeline(call: Caller, engine: FakeEngine, **args: Any) -> None:
    answer_gate(engine)
    call("pipeline", checks=False, production="none", **args)


def _publish(call: Caller, engine: FakeEngine, **args: Any) -> None:
    publish(call, engine, **args)


def _image(name: str) -> Any:
    return lambda call, engine, **args: call(name, **args)


TRAINING_FUNCTIONS = {
    "smoke": _smoke, "gate": _gate, "gate_report": _gate_report, "pipeline": _pipeline, "publish": _publish,
    "serving_image": _image("serving_image"), "monitor_image": _image("monitor_image"),
}  # fmt: skip


@pytest.mark.parametrize("function", sorted(TRAINING_FUNCTIONS))
@pytest.mark.parametrize("given", [None, "linux/arm64"])
def test_every_function_that_trains_trains_on_the_one_platform(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any], function: str, given: str | None
) -> None:
    """Without --artifact these functions train first: on linux/amd64, or on --train-platform, for every
    training chain they send (the artifact that smoke, gate, publish and the images read is that one)."""
    TRAINING_FUNCTIONS[function](call, engine, **({"train_platform": given} if given else {}))
    assert set(training_platforms(engine)) == {given or "linux/amd64"}
