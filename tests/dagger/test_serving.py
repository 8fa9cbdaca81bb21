"""`serving_image`: `mlci serve` as the entrypoint, the artifact baked in, port 8080, OCI labels."""

from __future__ import annotations

from typing import Any

from .cli_contract import assert_cli_accepts
from .conftest import Caller
from .engine import FakeEngine


def test_entrypoint_serves_the_baked_in_artifact_on_8080(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    g = engine.graph(call("serving_image"))
    entrypoint = g.one("withEntrypoint")["args"]
    opts = assert_cli_accepts(entrypoint)
    assert entrypoint[:2] == ["mlci", "serve"] and opts["host"] == "0.0.0.0" and opts["port"] == "8080"
    assert opts["log_dir"] == "/var/lib/mlci/predictions"  # where the monitor image reads it
    (baked,) = [d for d in g.calls("withDirectory") if d["path"] == opts["artifact"]]
    # The artifact is the output of `train` (no --artifact given): the evaluate directory of the stage container.
    assert engine.graph(baked["source"]).steps[-1].args == {"path": "/mlci/out/artifact"}
    assert g.one("withExposedPort")["port"] == 8080
    assert g.fields()[-1] == "withEntrypoint"


def test_labels_carry_the_artifact_digest_and_the_source_commit(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    labels = {c["name"]: c["value"] for c in engine.graph(call("serving_image")).calls("withLabel")}
    assert labels["dev.mlci.artifact.digest"] == manifest["digest"]
    assert labels["org.opencontainers.image.revision"] == manifest["runtime"]["git_commit"]
    assert "breast-cancer" in labels["org.opencontainers.image.title"]
    labels = {c["name"]: c["value"] for c in engine.graph(call("serving_image", commit="f00d")).calls("withLabel")}
    assert labels["org.opencontainers.image.revision"] == "f00d"


def test_the_image_holds_neither_the_model_source_nor_the_build_cache(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    g = engine.graph(call("serving_image"))
    assert "withMountedDirectory" not in g.fields()  # no /src: training data stays out of the image
    assert g.one("withoutMount") == {"path": "/root/.cache/pip"}
    assert g.fields().index("withoutMount") > g.fields().index("withMountedCache")


def test_a_given_artifact_is_used_as_is(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    from dagger import dag

    from .conftest import run

    given = run(lambda: dag.host().directory("/tmp/artifact").id())
    g = engine.graph(call("serving_image", artifact=given))
    assert "mlci" not in [e[0] for e in g.execs()]  # nothing trained
    (baked,) = [d for d in g.calls("withDirectory") if d["path"] == "/mlci/artifact"]
    assert engine.graph(baked["source"]).one("directory") == {"path": "/tmp/artifact"}
    read = engine.last("contents").chain
    assert read[-2].args == {"path": "manifest.json"} and any(s.args.get("path") == "/tmp/artifact" for s in read)


def test_monitor_image_watches_the_prediction_log_of_the_baked_in_artifact(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    g = engine.graph(call("monitor_image", interval=30.0))
    entrypoint = g.one("withEntrypoint")["args"]
    opts = assert_cli_accepts(entrypoint)
    assert entrypoint[:2] == ["mlci", "monitor"] and opts["log_dir"] == "/var/lib/mlci/predictions"
    assert opts["interval"] == "30" and opts["cycles"] == "0"
    (baked,) = [d for d in g.calls("withDirectory") if d["path"] == opts["artifact"]]
    assert engine.graph(baked["source"]).steps[-1].args == {"path": "/mlci/out/artifact"}
    labels = {c["name"]: c["value"] for c in g.calls("withLabel")}
    assert labels["dev.mlci.artifact.digest"] == manifest["digest"]
    assert g.one("withoutMount") == {"path": "/root/.cache/pip"}
