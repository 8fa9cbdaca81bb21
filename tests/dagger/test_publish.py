"""`publish`: `mlci push` with the password as a secret variable, the serving image with registry auth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import REMOTE_TOML, SERVICE_TOML, answer_config
from .cli_contract import assert_cli_accepts
from .conftest import Caller, run
from .engine import FakeEngine, Step
from .test_gate import answer_gate

PLAINTEXT = "s3cr3t-registry-token-7f1e"
PUSHED = {"artifact_digest": "sha256:" + "3c" * 32, "manifest_digest": "sha256:" + "9d" * 32, "tags": ["candidate"], "registry": "http://registry:5000/acme/bc"}


def answer_push(engine: FakeEngine) -> None:
    def respond(chain: list[Step], _: FakeEngine) -> str | None:
        if chain[-1].field == "stdout" and chain[-2].field == "withExec" and chain[-2].args["args"][:2] == ["mlci", "push"]:
            return json.dumps(PUSHED)
        return None

    engine.responders.append(respond)


@pytest.fixture
def secret(engine: FakeEngine) -> str:
    from dagger import dag

    return run(lambda: dag.set_secret("registry-password", PLAINTEXT).id())


def publish(call: Caller, engine: FakeEngine, **args: Any) -> dict[str, Any]:
    answer_config(engine, REMOTE_TOML)
    answer_gate(engine)
    answer_push(engine)
    return json.loads(call("publish", registry="ghcr.io", repository="acme/bc-serving", **args))


def test_artifact_and_image_are_pushed_and_both_references_returned(call: Caller, engine: FakeEngine, manifest: dict[str, Any], secret: str) -> None:
    refs = publish(call, engine, username="bot", password=secret, tag="candidate")
    serving, monitor = engine.all("publish")[-2:]
    assert serving.chain[-1].args == {"address": "ghcr.io/acme/bc-serving:candidate"}
    assert monitor.chain[-1].args == {"address": "ghcr.io/acme/bc-serving-monitor:candidate"}
    assert refs == {
        "artifact": PUSHED,
        "serving_image": f"ghcr.io/acme/bc-serving:candidate@sha256:{'ab' * 32}",
        "monitor_image": f"ghcr.io/acme/bc-serving-monitor:candidate@sha256:{'ab' * 32}",
    }
    for published, command in ((serving, "serve"), (monitor, "monitor")):
        image = published.chain[:-1]
        assert next(s for s in image if s.field == "withEntrypoint").args["args"][:2] == ["mlci", command]
        (auth,) = [s.args for s in image if s.field == "withRegistryAuth"]
        assert (auth["address"], auth["username"]) == ("ghcr.io", "bot") and engine.same(auth["secret"], secret)


def test_push_runs_mlci_push_with_the_verdict_and_the_password_as_a_secret(call: Caller, engine: FakeEngine, manifest: dict[str, Any], secret: str) -> None:
    publish(call, engine, username="bot", password=secret)
    query = next(q for q in engine.all("stdout") if q.chain[-2].args["args"][:2] == ["mlci", "push"])
    steps = query.chain[:-1]
    argv = steps[-1].args["args"]
    opts = assert_cli_accepts(argv)
    assert opts["tags"] == ["candidate"] and opts["as_json"] is True
    verdict = next(s.args for s in steps if s.field == "withFile" and s.args["path"] == opts["verdict_file"])
    assert engine.graph(verdict["source"]).steps[-1].args == {"path": "/mlci/out/verdict.json"}
    (password,) = [s.args for s in steps if s.field == "withSecretVariable"]
    assert password["name"] == "MLCI_REGISTRY_PASSWORD" and engine.same(password["secret"], secret)
    assert {"name": "MLCI_REGISTRY_USERNAME", "value": "bot"} in [s.args for s in steps if s.field == "withEnvVariable"]
    assert any(s.field == "withEnvVariable" and s.args["name"] == "MLCI_RUN_NONCE" for s in steps)


def test_the_password_never_appears_in_plain_text(call: Caller, engine: FakeEngine, manifest: dict[str, Any], secret: str) -> None:
    publish(call, engine, username="bot", password=secret)
    carrying = [q for q in engine.queries if PLAINTEXT in q.text]
    # Only the test's own setSecret (the CLI's env:// lookup in real use) holds the value.
    assert [q.chain[0].field for q in carrying] == ["setSecret"]
    names = {s.args.get("name") for q in engine.queries for s in q.chain if s.field == "withEnvVariable"}
    assert "MLCI_REGISTRY_PASSWORD" not in names


def test_every_push_bypasses_the_exec_cache(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    publish(call, engine)
    publish(call, engine)
    nonces = [
        s.args["value"] for q in engine.all("stdout") if q.chain[-2].args["args"][:2] == ["mlci", "push"]
        for s in q.chain if s.field == "withEnvVariable" and s.args["name"] == "MLCI_RUN_NONCE"
    ]  # fmt: skip
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_anonymous_registry_and_half_given_credentials(call: Caller, engine: FakeEngine, manifest: dict[str, Any], secret: str) -> None:
    publish(call, engine)
    assert not any(s.field in ("withRegistryAuth", "withSecretVariable") for q in engine.queries for s in q.chain)
    with pytest.raises(FunctionError, match="--password was given without --username"):
        publish(call, engine, password=secret)
    with pytest.raises(FunctionError, match="--username 'bot' was given without --password"):
        publish(call, engine, username="bot")


def test_a_registry_service_is_bound_for_the_push_and_used_for_the_publish(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    registry = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    answer_config(engine, SERVICE_TOML)
    answer_gate(engine)
    answer_push(engine)
    call("publish", registry="registry:5000", repository="acme/bc-serving", registry_service=registry)
    serving, monitor = (q.chain[-1].args for q in engine.all("publish")[-2:])
    assert serving["address"] == "registry:5000/acme/bc-serving:candidate"
    assert monitor["address"] == "registry:5000/acme/bc-serving-monitor:candidate"
    assert engine.same(serving["registryService"], registry) and engine.same(monitor["registryService"], registry)
    query = next(q for q in engine.all("stdout") if q.chain[-2].args["args"][:2] == ["mlci", "push"])
    (binding,) = [s.args for s in query.chain if s.field == "withServiceBinding"]
    assert binding["alias"] == "registry" and engine.same(binding["service"], registry)


def test_the_registry_service_is_bound_to_the_gate_publish_judges_with(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """Without --verdict, publish gates against production in the registry: that container needs the service."""
    from dagger import dag

    registry = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    answer_config(engine, SERVICE_TOML)
    answer_gate(engine)
    answer_push(engine)
    call("publish", registry="registry:5000", repository="acme/bc-serving", registry_service=registry)
    gate = next(q for q in engine.all("exitCode") if q.chain[-2].args["args"][:2] == ["mlci", "gate"])
    (binding,) = [s.args for s in gate.chain if s.field == "withServiceBinding"]
    assert binding["alias"] == "registry" and engine.same(binding["service"], registry)


def test_platform_variants_are_built_and_published_as_one_index(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """core/schema/container.go publish(platformVariants): one index with every variant; each variant is
    built on dag.container(platform=...) (a foreign platform needs emulation on the engine host)."""
    publish(call, engine, platforms=["linux/amd64", "linux/arm64"])
    serving, monitor = engine.all("publish")[-2:]
    for published in (serving, monitor):
        image = published.chain[:-1]
        assert image[0].field == "container" and image[0].args == {"platform": "linux/amd64"}
        (variant,) = published.chain[-1].args["platformVariants"]
        assert engine.chain_of(variant)[0].args == {"platform": "linux/arm64"}
        assert engine.graph(variant).one("withEntrypoint") == next(s.args for s in image if s.field == "withEntrypoint")


def test_by_default_only_the_engines_platform_is_published(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    publish(call, engine)
    for published in engine.all("publish")[-2:]:
        assert published.chain[0].args == {} and "platformVariants" not in published.chain[-1].args
