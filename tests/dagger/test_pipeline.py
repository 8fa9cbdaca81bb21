"""`pipeline`: every stage in order, publish and deploy only after a passing gate, one output directory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

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
    """What was forced, in order: checks synced, gate/push/deploy commands run, images published."""
    order = []
    for q in engine.queries:
        leaf = q.chain[-1].field
        if leaf == "sync" and q.chain[-2].field in ("withExec", "file"):
            order.append("test" if q.chain[-2].field == "file" else "lint")
        elif leaf == "stdout":
            order.append(q.chain[-2].args["args"][1])
        elif leaf == "publish":
            order.append("publish")
    return order


def test_the_full_pipeline_in_order_into_one_directory(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

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
