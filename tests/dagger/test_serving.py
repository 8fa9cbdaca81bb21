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
    assert "/src" not in [m["path"] for m in g.calls("withMountedDirectory")]  # training data stays out
    assert {"path": "/root/.cache/pip"} in g.calls("withoutMount")
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
    assert {"path": "/root/.cache/pip"} in g.calls("withoutMount")


def test_serving_writes_the_prediction_log_where_the_monitor_reads_it(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """The two images agree on one directory, and it exists in both (a volume mounted there by the user
    replaces it; without one, `mlci serve` writes into a directory the image already has)."""
    serving = engine.graph(call("serving_image"))
    monitor = engine.graph(call("monitor_image"))
    serve_dir = assert_cli_accepts(serving.one("withEntrypoint")["args"])["log_dir"]
    monitor_dir = assert_cli_accepts(monitor.one("withEntrypoint")["args"])["log_dir"]
    assert serve_dir == monitor_dir
    for image in (serving, monitor):
        made = [d for d in image.calls("withDirectory") if d["path"] == serve_dir]
        assert made and [s.field for s in engine.chain_of(made[0]["source"])] == ["directory"]


def test_the_serving_image_holds_a_built_wheel_and_no_training_stack(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    """serve/monitor never import scikit-learn, skl2onnx or skops (test_lean_runtime.py runs them with those
    imports blocked); pandas stays (serving/server.py imports model/onnxio.py, which imports pandas)."""
    from mlci_dagger.main import SERVING_DROPS

    for function in ("serving_image", "monitor_image"):
        g = engine.graph(call(function))
        assert "/opt/mlci" not in [d["path"] for d in g.calls("withDirectory")]  # no mlci source tree
        (req,) = [e for e in g.execs() if e[:2] == ["python", "requirements.py"]]
        assert req[2:] == ["pyproject.toml", "--runtime", *(f"--without={d}" for d in sorted(SERVING_DROPS))]
        (wheel,) = [m for m in g.calls("withMountedDirectory") if m["path"] == "/tmp/mlci-wheel"]
        built = engine.graph(wheel["source"])
        assert built.execs()[-1][:3] == ["pip", "wheel", "--no-deps"] and built.steps[-1].field == "directory"
        assert any("/tmp/mlci-wheel" in e and "--no-deps" in e for e in g.execs())
        assert "/tmp/mlci-wheel" in [u["path"] for u in g.calls("withoutMount")]
