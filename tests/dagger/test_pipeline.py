"""`pipeline`: every stage in order, publish and deploy only after a passing gate, one output directory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import REMOTE_TOML, answer_config, answer_exec, last_exec
from .conftest import Caller, run
from .engine import FakeEngine, Step
from .test_gate import MARKDOWN, answer_gate
from .test_publish import PUSHED, answer_push


def answer_deploy(engine: FakeEngine) -> None:
    def respond(chain: list[Step], _: FakeEngine) -> str | None:
        if chain[-1].field == "stdout" and chain[-2].args.get("args", [""])[:2] == ["mlci", "promote"]:
            return json.dumps({"promotion": {"env": "staging"}, "deployed": {"target": "kubernetes"}})
        return None

    engine.responders.append(respond)


def leaf_order(engine: FakeEngine) -> list[str]:
    """What was forced, in order: lint and test run, gate/push/deploy commands run, images published.

    An exec counts once however many of its leaves (exitCode, stdout, stderr, a file) were read after it.
    """
    names = {"ruff": "lint", "python": "test"}
    order: list[str] = []
    for q in engine.queries:
        leaf, argv = q.chain[-1].field, last_exec(q.chain)
        if leaf == "publish":
            order.append("publish")
            continue
        if leaf not in ("sync", "stdout", "exitCode") or not argv or q.chain[-2].field not in ("withExec", "file"):
            continue
        name = names.get(argv[0], argv[1] if argv[0] == "mlci" else argv[0])
        if name in ("lint", "test", "gate", "push", "promote", "deploy") and (not order or order[-1] != name):
            order.append(name)
    return order


def test_the_full_pipeline_in_order_into_one_directory(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    answer_config(engine, REMOTE_TOML)
    answer_gate(engine)
    answer_push(engine)
    answer_deploy(engine)
    password = run(lambda: dag.set_secret("pw", "hunter2").id())
    result = call(
        "pipeline", registry="ghcr.io", repository="acme/bc-serving", username="bot", password=password,
        deploy_to="staging", approve=True, commit="f00d",
    )  # fmt: skip
    order = leaf_order(engine)
    assert sorted(order[:2]) == ["lint", "test"]
    assert order[2:] == ["gate", "push", "publish", "publish", "promote"]  # serving image, then monitor image
    out = engine.graph(result)
    assert out.steps[0].field == "directory"
    entries = {s.args["path"]: s for s in out.steps[1:]}
    assert list(entries) == ["junit.xml", "artifact", "smoke.json", "verdict.json", "verdict.md", "published.json", "deployed.json"]
    assert entries["verdict.md"].args["contents"] == MARKDOWN
    assert json.loads(entries["published.json"].args["contents"])["artifact"] == PUSHED
    assert engine.graph(entries["junit.xml"].args["source"]).execs()[-1][:3] == ["python", "-m", "pytest"]
    assert engine.graph(entries["artifact"].args["source"]).steps[-1].args == {"path": "/mlci/out/artifact"}
    serving = engine.all("publish")[-2]
    labels = {s.args["name"]: s.args["value"] for s in serving.chain if s.field == "withLabel"}
    assert labels["org.opencontainers.image.revision"] == "f00d"


def test_a_failed_gate_stops_before_anything_is_pushed(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_config(engine, REMOTE_TOML)
    answer_gate(engine, exit_code=1, stdout="gate FAILED")
    with pytest.raises(FunctionError, match="gate rejected the candidate"):
        call("pipeline", registry="ghcr.io", repository="acme/bc-serving", deploy_to="staging")
    assert "push" not in leaf_order(engine) and "publish" not in leaf_order(engine)


def test_without_checks_or_registry_it_trains_smokes_and_gates_only(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine)
    result = call("pipeline", checks=False)
    assert leaf_order(engine) == ["gate"]
    assert [s.args["path"] for s in engine.graph(result).steps[1:]] == ["artifact", "smoke.json", "verdict.json", "verdict.md"]


def test_deploy_needs_a_published_candidate_and_a_known_environment(call: Caller, engine: FakeEngine) -> None:
    with pytest.raises(FunctionError, match="--deploy-to needs --registry"):
        call("pipeline", deploy_to="staging")
    with pytest.raises(FunctionError, match="--registry needs --repository"):
        call("pipeline", registry="ghcr.io")
    with pytest.raises(FunctionError, match="--deploy-to must be one of staging, production; got 'qa'"):
        call("pipeline", registry="ghcr.io", repository="x", deploy_to="qa")
    assert not engine.all("stdout")


def resolved(engine: FakeEngine, value: Any) -> Any:
    """``value`` with every object ID replaced by the chain that built it (the engine's IDs are digests of
    that chain; the FakeEngine's are counters, so two builds of one object get two IDs)."""
    if isinstance(value, str) and value in engine.objects:
        return resolved(engine, engine.chain_of(value))
    if isinstance(value, list):
        return [resolved(engine, v) for v in value]
    if isinstance(value, Step):
        return (value.on, value.field, {k: resolved(engine, v) for k, v in value.args.items()})
    return value


def exec_chain(engine: FakeEngine, prefix: list[str]) -> list[Any]:
    """The chain of the (last) query whose last exec starts with ``prefix``, up to that exec, IDs resolved."""
    q = next(q for q in reversed(engine.queries) if last_exec(q.chain)[: len(prefix)] == prefix)
    idx = max(i for i, s in enumerate(q.chain) if s.field == "withExec")
    return resolved(engine, q.chain[: idx + 1])


def test_gate_report_and_pipeline_share_the_smoke_and_gate_execs(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """The engine caches an exec by its whole chain, expect included (core/schema/container.go withExec
    args): the same chain in gate_report and pipeline runs smoke and gate once per PR."""
    answer_gate(engine)
    call("gate_report", production="none")
    report_smoke, report_gate = exec_chain(engine, ["mlci", "smoke"]), exec_chain(engine, ["mlci", "gate"])
    call("pipeline", checks=False, production="none")
    assert exec_chain(engine, ["mlci", "smoke"]) == report_smoke
    assert exec_chain(engine, ["mlci", "gate"]) == report_gate


def test_keep_going_runs_every_stage_it_can_and_returns_the_reports(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_config(engine, REMOTE_TOML)
    answer_gate(engine, exit_code=1, stdout="gate FAILED (markdown)", passed=False)
    answer_exec(engine, ["ruff", "check"], 1, stdout="E501 line too long")
    answer_exec(engine, ["python", "-m", "pytest"], 1, stdout="1 failed")
    result = call("pipeline", keep_going=True, registry="ghcr.io", repository="acme/bc-serving")
    out = engine.graph(result)
    entries = {s.args["path"]: s for s in out.steps[1:]}
    assert {"junit.xml", "verdict.json", "verdict.md", "pipeline.json"} <= set(entries)
    assert entries["verdict.md"].args["contents"] == "gate FAILED (markdown)"
    report = json.loads(entries["pipeline.json"].args["contents"])
    assert report["ok"] is False
    stages = report["stages"]
    assert stages["lint"]["ok"] is False and stages["lint"]["exit_code"] == 1 and "E501" in stages["lint"]["error"]
    assert stages["test"]["ok"] is False and stages["test"]["exit_code"] == 1
    assert stages["train"]["ok"] is stages["smoke"]["ok"] is True
    assert stages["gate"]["ok"] is False and "rejected" in stages["gate"]["error"]
    assert stages["publish"] == {"ok": False, "skipped": "the gate did not pass"}
    assert "push" not in leaf_order(engine) and "publish" not in leaf_order(engine)


def test_keep_going_on_a_clean_run_says_ok(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine)
    result = call("pipeline", keep_going=True, checks=False, production="none")
    entries = {s.args["path"]: s for s in engine.graph(result).steps[1:]}
    report = json.loads(entries["pipeline.json"].args["contents"])
    assert report["ok"] is True and all(s["ok"] for s in report["stages"].values())


def test_without_keep_going_the_first_failure_fails_the_call(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    answer_gate(engine)
    answer_exec(engine, ["python", "-m", "pytest"], 1, stdout="1 failed")
    with pytest.raises(FunctionError, match=r"pytest failed \(exit 1\)"):
        call("pipeline")


def test_pipeline_passes_the_kubeconfig_to_deploy(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    answer_config(engine, REMOTE_TOML)
    answer_gate(engine)
    answer_push(engine)
    answer_deploy(engine)
    kubeconfig = run(lambda: dag.set_secret("kube", "apiVersion: v1").id())
    call("pipeline", checks=False, registry="ghcr.io", repository="acme/bc-serving", deploy_to="staging", kubeconfig=kubeconfig)
    promote = next(q for q in engine.all("stdout") if q.chain[-2].args["args"][:2] == ["mlci", "promote"])
    (mounted,) = [s.args for s in promote.chain if s.field == "withMountedSecret"]
    assert mounted["path"] == "/root/.kube/config" and engine.same(mounted["source"], kubeconfig)
