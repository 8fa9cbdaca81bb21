"""`smoke`: the serving image as a Dagger service, bound to a client container that runs `mlci smoke`."""

from __future__ import annotations

from typing import Any

from .cli_contract import assert_cli_accepts
from .conftest import Caller
from .engine import FakeEngine


def test_the_client_reaches_the_served_artifact_by_its_alias(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    result = call("smoke")
    assert engine.type_of(result) == "File"
    client = engine.graph(result)
    binding = client.one("withServiceBinding")
    argv = client.execs()[-1]
    opts = assert_cli_accepts(argv)
    assert argv[:2] == ["mlci", "smoke"]
    assert opts["url"] == f"http://{binding['alias']}:8080" and binding["alias"] == "server"
    assert client.steps[-1].field == "file" and client.steps[-1].args == {"path": opts["out"]}
    # The service is the serving image, started with its entrypoint (`mlci serve`).
    service = engine.graph(binding["service"])
    assert service.steps[-1].field == "asService" and service.steps[-1].args == {"useEntrypoint": True}
    assert service.one("withEntrypoint")["args"][:2] == ["mlci", "serve"]
    assert service.one("withExposedPort")["port"] == 8080


def test_client_and_server_judge_the_same_artifact(call: Caller, engine: FakeEngine, manifest: dict[str, Any]) -> None:
    client = engine.graph(call("smoke"))
    service = engine.graph(client.one("withServiceBinding")["service"])
    (on_client,) = [d["source"] for d in client.calls("withDirectory") if d["path"] == "/mlci/artifact"]
    (on_server,) = [d["source"] for d in service.calls("withDirectory") if d["path"] == "/mlci/artifact"]
    assert engine.chain_of(on_client) == engine.chain_of(on_server)
    opts = assert_cli_accepts(client.execs()[-1])
    assert opts["artifact"] == "/mlci/artifact" and opts["config_path"] == "mlci.toml"
    # The client has the model source (holdout rows come from the data); the server does not.
    assert client.one("withMountedDirectory")["path"] == "/src"
    assert "/src" not in [m["path"] for m in service.calls("withMountedDirectory")]
