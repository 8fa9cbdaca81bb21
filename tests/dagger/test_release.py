"""`deploy` and `rollback`: the release commands in a container, credentials as secrets, never cached."""

from __future__ import annotations

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import REMOTE_TOML, answer_config
from .cli_contract import assert_cli_accepts
from .conftest import Caller, run
from .engine import FakeEngine


def release_steps(engine: FakeEngine):
    query = engine.last("stdout")
    return query.chain[:-1], query.chain[-2].args["args"]


def test_deploy_promotes_then_deploys_with_secrets(call: Caller, engine: FakeEngine) -> None:
    from dagger import dag

    answer_config(engine, REMOTE_TOML)
    password = run(lambda: dag.set_secret("pw", "hunter2").id())
    kubeconfig = run(lambda: dag.set_secret("kube", "apiVersion: v1").id())
    call("deploy", env="staging", approve=True, username="bot", password=password, kubeconfig=kubeconfig)
    steps, argv = release_steps(engine)
    opts = assert_cli_accepts(argv)
    assert argv[:3] == ["mlci", "promote", "staging"] and opts["approve"] is True and opts["as_json"] is True
    (secret_var,) = [s.args for s in steps if s.field == "withSecretVariable"]
    assert secret_var["name"] == "MLCI_REGISTRY_PASSWORD" and engine.same(secret_var["secret"], password)
    (mounted,) = [s.args for s in steps if s.field == "withMountedSecret"]
    assert mounted["path"] == "/root/.kube/config" and engine.same(mounted["source"], kubeconfig)
    assert any(s.field == "withEnvVariable" and s.args["name"] == "MLCI_RUN_NONCE" for s in steps)


def test_deploy_without_promotion_and_rollback(call: Caller, engine: FakeEngine) -> None:
    answer_config(engine, REMOTE_TOML)
    call("deploy", env="production", promote=False)
    _, argv = release_steps(engine)
    assert argv[:3] == ["mlci", "deploy", "production"]
    assert_cli_accepts(argv)
    call("rollback", env="production")
    steps, argv = release_steps(engine)
    assert argv[:3] == ["mlci", "rollback", "production"]
    assert_cli_accepts(argv)
    assert not any(s.field in ("withSecretVariable", "withMountedSecret") for s in steps)


def test_unknown_environment_is_refused_before_anything_runs(call: Caller, engine: FakeEngine) -> None:
    with pytest.raises(FunctionError, match="env must be one of staging, production; got 'prod'"):
        call("rollback", env="prod")
    assert not engine.all("stdout")
