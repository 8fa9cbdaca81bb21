"""The release functions read [registry] url from --source's mlci.toml, and refuse what cannot work.

`mlci push` into the default [registry] (an OCI layout under the workspace) writes into /src of one exec,
which the engine discards when the exec ends (a mounted directory's changes are not kept unless read back:
core/container.go, withMountedDirectory); a registry service is reached by its alias from every container
that talks to it (core/service.go binds it per container with withServiceBinding).
"""

from __future__ import annotations

from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError

from .answers import REMOTE_TOML, SERVICE_TOML, answer_config, answer_exec
from .conftest import Caller, run
from .engine import FakeEngine
from .test_gate import answer_gate
from .test_publish import answer_push

LOCAL_TOML = '[model]\nname = "bc"\n[registry]\nurl = "oci-layout:.mlci/registry"\n'
DEFAULT_TOML = '[model]\nname = "bc"\n'


def nothing_ran(engine: FakeEngine) -> bool:
    return not [q for q in engine.queries if q.chain[-1].field in ("stdout", "exitCode", "sync", "publish")]


@pytest.mark.parametrize("toml", [LOCAL_TOML, DEFAULT_TOML], ids=["oci-layout", "default"])
@pytest.mark.parametrize(
    "function, args",
    [
        ("publish", {"registry": "ghcr.io", "repository": "acme/bc-serving"}),
        ("deploy", {"env": "staging"}),
        ("rollback", {"env": "production"}),
        ("pipeline", {"registry": "ghcr.io", "repository": "acme/bc-serving"}),
    ],
)
def test_release_functions_refuse_a_local_layout_registry_before_anything_runs(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any], toml: str, function: str, args: dict[str, Any]
) -> None:
    answer_config(engine, toml)
    with pytest.raises(
        FunctionError, match=r'(?s)local OCI layout.*discarded.*set \[registry\] url = "https://'
    ):
        call(function, **args)
    assert nothing_ran(engine)


def test_the_config_is_read_at_the_path_given(call: Caller, engine: FakeEngine) -> None:
    answer_config(engine, REMOTE_TOML, path="models/churn/mlci.toml")
    answer_exec(engine, ["mlci", "rollback"], stdout="{}")
    call("rollback", env="staging", ctor={"config": "models/churn/mlci.toml"})
    read = [q for q in engine.all("contents") if q.chain[-2].args["path"] == "models/churn/mlci.toml"]
    assert read


def test_a_config_that_is_not_toml_is_named(call: Caller, engine: FakeEngine) -> None:
    answer_config(engine, "[registry\nurl = ")
    with pytest.raises(FunctionError, match=r"--config 'mlci.toml' in --source is not valid TOML"):
        call("rollback", env="staging")


@pytest.mark.parametrize(
    "registry, alias",
    [("registry:5000", "registry"), ("reg.internal:5000", "reg.internal"), ("reg.internal", "reg.internal")],
)
def test_the_alias_is_the_host_without_its_port(
    call: Caller, engine: FakeEngine, manifest: dict[str, Any], registry: str, alias: str
) -> None:
    from dagger import dag

    answer_config(engine, f'[model]\nname = "bc"\n[registry]\nurl = "http://{registry}"\n')
    answer_gate(engine)
    answer_push(engine)
    service = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    call("publish", registry=registry, repository="acme/bc-serving", registry_service=service)
    push = next(q for q in engine.all("stdout") if q.chain[-2].args["args"][:2] == ["mlci", "push"])
    assert [s.args["alias"] for s in push.chain if s.field == "withServiceBinding"] == [alias]


@pytest.mark.parametrize("registry", ["localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost"])
def test_a_loopback_registry_with_a_service_is_refused(
    call: Caller, engine: FakeEngine, registry: str
) -> None:
    """Aliasing a service as `localhost` would shadow each container's own loopback (the alias goes into
    the container's /etc/hosts, core/service.go), and the engine aliases the image host the same way
    (core/container.go ContainerRegistryServiceBinding splits host:port)."""
    from dagger import dag

    answer_config(engine, SERVICE_TOML)
    service = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    with pytest.raises(FunctionError, match=r"loopback.*--registry=registry:5000"):
        call("publish", registry=registry, repository="acme/bc-serving", registry_service=service)
    assert nothing_ran(engine)


def test_a_registry_host_without_port_or_dot_is_refused(call: Caller, engine: FakeEngine) -> None:
    """reference.ParseNormalizedNamed (used by publish) reads `registry/acme/x` as docker.io/registry/acme/x."""
    answer_config(engine, REMOTE_TOML)
    with pytest.raises(FunctionError, match=r"--registry 'registry' .*Docker Hub.*registry:5000"):
        call("publish", registry="registry", repository="acme/bc-serving")
    assert nothing_ran(engine)


def test_the_service_must_be_the_mlci_toml_registry(call: Caller, engine: FakeEngine) -> None:
    from dagger import dag

    answer_config(engine, REMOTE_TOML)  # https://ghcr.io: the service would never be reached by mlci push
    service = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    with pytest.raises(
        FunctionError, match=r"--registry-service.*\[registry\] url 'https://ghcr.io'.*'registry:5000'"
    ):
        call("publish", registry="registry:5000", repository="acme/bc-serving", registry_service=service)


@pytest.mark.parametrize("function, args, command", [
    ("deploy", {"env": "staging"}, "promote"),
    ("deploy", {"env": "staging", "promote": False}, "deploy"),
    ("rollback", {"env": "production"}, "rollback"),
])  # fmt: skip
def test_promote_deploy_and_rollback_reach_the_registry_service(
    call: Caller, engine: FakeEngine, function: str, args: dict[str, Any], command: str
) -> None:
    from dagger import dag

    answer_config(engine, SERVICE_TOML)
    service = run(lambda: dag.container().from_("registry:2").with_exposed_port(5000).as_service().id())
    call(function, registry_service=service, **args)
    query = engine.last("stdout")
    assert query.chain[-2].args["args"][:2] == ["mlci", command]
    (binding,) = [s.args for s in query.chain if s.field == "withServiceBinding"]
    assert binding["alias"] == "registry" and engine.same(binding["service"], service)
