"""`gate` and `gate_report`: `mlci gate` on the artifact with the smoke report; a failed gate fails the call."""

from __future__ import annotations

from typing import Any

import pytest
from dagger import ExecError
from dagger.mod._exceptions import FunctionError

from .cli_contract import assert_cli_accepts
from .conftest import Caller, run
from .engine import ExecFailure, FakeEngine, Step

MARKDOWN = "### mlci gate: passed\n| check | value |\n"


def answer_gate(engine: FakeEngine, exit_code: int = 0, stdout: str = MARKDOWN) -> None:
    def respond(chain: list[Step], _: FakeEngine) -> str | None:
        if chain[-1].field == "stdout" and chain[-2].field == "withExec" and chain[-2].args["args"][:2] == ["mlci", "gate"]:
            if exit_code:
                raise ExecFailure(chain[-2].args["args"], exit_code, stdout=stdout, stderr="")
            return stdout
        return None

    engine.responders.append(respond)


def test_gate_judges_the_artifact_with_the_smoke_report_and_returns_verdict_json(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any]
) -> None:
    answer_gate(engine)
    result = call("gate")
    assert engine.type_of(result) == "File"
    g = engine.graph(result)
    argv = g.execs()[-1]
    opts = assert_cli_accepts(argv)
    assert argv[:2] == ["mlci", "gate"] and opts["production"] == "registry" and opts["fmt"] == "markdown"
    assert g.steps[-1].field == "file" and g.steps[-1].args == {"path": opts["out"]}
    (smoke,) = [f for f in g.calls("withFile") if f["path"] == opts["smoke_file"]]
    smoke_graph = engine.graph(smoke["source"])
    assert smoke_graph.execs()[-1][:2] == ["mlci", "smoke"]  # the smoke run's own report
    (artifact,) = [d for d in g.calls("withDirectory") if d["path"] == opts["artifact"]]
    assert engine.graph(artifact["source"]).steps[-1].args == {"path": "/mlci/out/artifact"}


def test_a_failed_gate_fails_the_call_with_the_verdict(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine, exit_code=1, stdout="  ✗ accuracy: 0.81 < 0.90\ngate FAILED\n")
    with pytest.raises(FunctionError, match=r"(?s)gate rejected the candidate.*accuracy: 0.81 < 0.90"):
        call("gate")


def test_other_exec_errors_pass_through_unchanged(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine, exit_code=2, stdout="", )
    with pytest.raises(ExecError) as info:
        call("gate")
    assert info.value.exit_code == 2


def test_production_choices_and_an_explicit_production_artifact(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    answer_gate(engine)
    with pytest.raises(FunctionError, match=r"--production must be 'registry' or 'none'; got 'latest'"):
        call("gate", production="latest")
    prod = run(lambda: dag.host().directory("/prod").id())
    g = engine.graph(call("gate", production_artifact=prod))
    opts = assert_cli_accepts(g.execs()[-1])
    (mounted,) = [d for d in g.calls("withDirectory") if d["path"] == opts["production"]]
    assert engine.graph(mounted["source"]).one("directory") == {"path": "/prod"}


def test_gate_report_returns_the_markdown_even_when_the_gate_fails(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine, stdout="gate FAILED (markdown)")
    assert call("gate_report", production="none") == "gate FAILED (markdown)"
    query = engine.last("stdout").chain
    assert query[-2].args["expect"] == "ANY" and "none" in query[-2].args["args"]
    smoke_file = next(s for s in query if s.field == "withFile" and s.args["path"] == "/mlci/in/smoke.json")
    smoke_exec = engine.graph(smoke_file.args["source"]).calls("withExec")[-1]
    assert smoke_exec["args"][:2] == ["mlci", "smoke"] and smoke_exec["expect"] == "ANY"
