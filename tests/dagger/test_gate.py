"""`gate` and `gate_report`: `mlci gate` on the artifact with the smoke report; a failed gate fails the call."""

from __future__ import annotations

from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import REMOTE_TOML, SERVICE_TOML, answer_config, answer_exec, last_exec, verdict
from .cli_contract import assert_cli_accepts
from .conftest import Caller, run
from .engine import FakeEngine

MARKDOWN = "### mlci gate: passed\n| check | value |\n"


def answer_gate(engine: FakeEngine, exit_code: int = 0, stdout: str = MARKDOWN, passed: bool | None = None) -> None:
    """`mlci gate` exits ``exit_code`` printing ``stdout``; verdict.json says passed = exit 0 unless given."""
    passed = exit_code == 0 if passed is None else passed
    answer_exec(engine, ["mlci", "gate"], exit_code, stdout=stdout, files={"/mlci/out/verdict.json": verdict(passed)})


def test_gate_judges_the_artifact_with_the_smoke_report_and_returns_verdict_json(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any]
) -> None:
    answer_config(engine, REMOTE_TOML)  # production = the registry's production tag (a local layout is none)
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


def test_other_exit_codes_are_errors_with_their_output_not_rejections(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """The gate runs with expect=ANY (core/schema/container.go: withExec expect), so a non-zero exit is read
    back, not raised as an ExecError: exit 2 (bad input) is reported as the error it is, with stderr."""
    answer_exec(engine, ["mlci", "gate"], 2, stderr="Error: [gate] min_accuracy must be <= 1")
    with pytest.raises(FunctionError, match=r"(?s)mlci gate failed \(exit 2\).*min_accuracy must be <= 1") as info:
        call("gate")
    assert "rejected" not in str(info.value)


def test_exit_1_without_a_failed_verdict_is_an_error_not_a_rejection(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """mlci exits 1 for a RegistryError too (mlci/errors.py): an unreachable registry or a 401 writes no
    verdict.json, and must not read as "the gate rejected the candidate"."""
    answer_config(engine, REMOTE_TOML)
    answer_exec(engine, ["mlci", "gate"], 1, stderr="Error: registry https://ghcr.io answered 401 Unauthorized")
    with pytest.raises(FunctionError, match=r"(?s)mlci gate failed \(exit 1\).*401 Unauthorized") as info:
        call("gate")
    assert "rejected" not in str(info.value)


def test_a_failed_smoke_test_is_reported_as_such_before_any_gate(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """smoke.json is a lazy File: unless the smoke exec is synced first, its failure surfaces only inside
    the gate's query and reads as a gate failure. The module reads the smoke's exit code first."""
    answer_gate(engine)
    answer_exec(engine, ["mlci", "smoke"], 1, stdout="smoke FAILED: p99 812 ms > 250 ms\n")
    with pytest.raises(FunctionError, match=r"(?s)smoke test failed \(mlci smoke exit 1\).*p99 812 ms") as info:
        call("gate", production="none")
    assert "gate rejected" not in str(info.value)
    assert not [q for q in engine.queries if last_exec(q.chain)[:2] == ["mlci", "gate"]]


def test_the_gate_is_never_served_from_the_function_cache_and_reads_production_afresh(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any], registered: Any
) -> None:
    """core/typedef.go: the Default cache policy keeps a function's result up to a week
    (MaxFunctionCacheTTLSeconds, core/modfunc.go); Never adds a per-call input. The exec reading the
    mutable production tag gets a fresh nonce, so the exec cache cannot replay an old verdict either."""
    _, functions, _ = registered
    assert functions["gate"].cache == functions["gate_report"].cache == "Never"
    answer_config(engine, REMOTE_TOML)
    answer_gate(engine)
    nonces = []
    for _ in range(2):
        g = engine.graph(call("gate"))
        nonces += [c["value"] for c in g.calls("withEnvVariable") if c["name"] == "MLCI_RUN_NONCE"]
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    g = engine.graph(call("gate", production="none"))  # nothing mutable is read: the exec may be cached
    assert "MLCI_RUN_NONCE" not in [c["name"] for c in g.calls("withEnvVariable")]


def test_a_local_layout_registry_is_not_production(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """With the default [registry] (an OCI layout under the workspace, in the uploaded source) the gate
    would compare with a laptop copy, or nothing: it compares with nothing, and says so."""
    answer_config(engine, '[model]\nname = "bc"\n')
    answer_gate(engine)
    report = call("gate_report")
    argv = engine.last("stdout").chain[-2].args["args"]
    assert assert_cli_accepts(argv)["production"] == "none"
    assert "[registry] url" in report and "no production model" in report


def test_the_registry_service_is_bound_to_the_gate(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    answer_config(engine, SERVICE_TOML)
    answer_gate(engine)
    registry = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    g = engine.graph(call("gate", registry_service=registry))
    (binding,) = g.calls("withServiceBinding")
    assert binding["alias"] == "registry" and engine.same(binding["service"], registry)
    assert assert_cli_accepts(g.execs()[-1])["production"] == "registry"


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
