"""Fixtures for the Dagger module tests: the engine schema, a fake engine session, and `dagger call`.

The module is loaded the way the Python SDK runtime loads it: with DAGGER_MODULE, DAGGER_MAIN_OBJECT and
DAGGER_DEFAULT_PYTHON_PACKAGE set before `dagger` is imported, from ci/src on the path.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = Path(
    os.environ.get("MLCI_DAGGER_SCHEMA", REPO.parent / "shared" / "dagger" / "schema-v0.21.8.graphqls")
)
MODULE_FILE = Path(tempfile.mkdtemp(prefix="mlci-dagger-")) / "module.json"  # where register() writes
atexit.register(shutil.rmtree, MODULE_FILE.parent, True)

# What the Python SDK runtime sets for this module (see its WithSource step), before dagger is imported.
os.environ.setdefault("DAGGER_MODULE", "mlci")
os.environ.setdefault("DAGGER_MAIN_OBJECT", "Mlci")
os.environ.setdefault("DAGGER_DEFAULT_PYTHON_PACKAGE", "mlci_dagger")
os.environ.setdefault("DAGGER_MODULE_FILE", str(MODULE_FILE))
sys.path.insert(0, str(REPO / "ci" / "src"))
pytest.importorskip(
    "dagger", reason="the Dagger Python SDK is not installed: pip install 'mlci[dagger]' (dagger-io 0.21.x)"
)

import anyio  # noqa: E402
import graphql  # noqa: E402

from .engine import FakeEngine  # noqa: E402
from .registration import Fn, function_of  # noqa: E402


@pytest.fixture(scope="session")
def schema() -> graphql.GraphQLSchema:
    if not SCHEMA.is_file():
        pytest.skip(f"Dagger API schema not found at {SCHEMA} (set MLCI_DAGGER_SCHEMA to its path)")
    return graphql.build_schema(SCHEMA.read_text(encoding="utf-8"))


@pytest.fixture
def engine(schema: graphql.GraphQLSchema) -> Iterator[FakeEngine]:
    """Plug a FakeEngine into the SDK's shared connection (the one `dag` uses) for one test."""
    from dagger.client._session import SharedConnection

    conn = SharedConnection()
    previous = conn._session
    fake = FakeEngine(schema)
    conn._session = fake  # type: ignore[assignment]
    try:
        yield fake
    finally:
        conn._session = previous


Caller = Callable[..., Any]


@pytest.fixture
def call(engine: FakeEngine) -> Caller:
    """`dagger call [constructor args] FUNCTION [args]` through the SDK's own invoke path.

    Constructor and function arguments are given as the engine passes them (JSON-able values, object
    IDs for Directory/File/Secret arguments). Returns the function's result as the SDK would return it
    to the engine (an object ID for a Container/Directory/File).
    """
    import mlci_dagger  # noqa: F401  (registers Mlci with the SDK's default module)
    from dagger.mod import default_module

    def run(function: str, *, ctor: dict[str, Any] | None = None, **inputs: Any) -> Any:
        async def go() -> Any:
            mod = default_module()
            constructor_inputs = {
                "source": await source_id(),
                "mlci_source": await source_id(),
                **(ctor or {}),
            }
            state = await mod.get_result("Mlci", {}, "", constructor_inputs)
            return await mod.get_result("Mlci", state, function, inputs)

        return anyio.run(go)

    return run


async def source_id() -> str:
    """The ID of a host directory, as DefaultPath would supply it."""
    from dagger import dag

    return await dag.host().directory(str(REPO)).id()


MANIFEST = {
    "name": "breast-cancer",
    "digest": "sha256:" + "3c" * 32,
    "runtime": {"git_commit": "7193e031b122c8c4532adf81278ad2d0271bf843"},
}


@pytest.fixture
def manifest(engine: FakeEngine) -> dict[str, Any]:
    """Answer `artifact.file("manifest.json").contents()` with a manifest (the serving image labels read it)."""
    import json

    def respond(chain: list[Any], _: FakeEngine) -> str | None:
        if (
            chain[-1].field == "contents"
            and chain[-2].field == "file"
            and chain[-2].args.get("path") == "manifest.json"
        ):
            return json.dumps(MANIFEST)
        return None

    engine.responders.append(respond)
    return MANIFEST


def run(fn: Callable[[], Any]) -> Any:
    """Await ``fn()`` (an SDK coroutine) against the engine fixture."""

    async def go() -> Any:
        return await fn()

    return anyio.run(go)


@pytest.fixture
def registered(engine: FakeEngine) -> tuple[str, dict[str, Fn], Fn]:
    """(module description, functions by name, constructor) as registered by the SDK."""
    import mlci_dagger  # noqa: F401
    from dagger.mod import default_module
    from dagger.mod._converter import to_typedef

    # to_typedef is functools.cache'd: a TypeDef it returned in an earlier test holds the ID an earlier
    # FakeEngine gave it, which names another object here (a list's element type can come back as itself).
    to_typedef.cache_clear()
    module_file = Path(os.environ["DAGGER_MODULE_FILE"])
    anyio.run(default_module().register)
    module = engine.graph(json.loads(module_file.read_text()))
    (obj,) = module.calls("withObject")
    typedef = engine.graph(obj["object"])
    assert typedef.one("withObject")["name"] == "Mlci"
    functions = dict(function_of(engine, c["function"]) for c in typedef.calls("withFunction"))
    _, ctor = function_of(engine, typedef.one("withConstructor")["function"])
    return module.one("withDescription")["description"], functions, ctor


# -- the graph executor (tests marked `executor`; `make test-executed`) -----------------------------------


def _executor_prerequisites() -> str | None:
    """Why the executor cannot run here, or None."""
    if os.geteuid() != 0:
        return "the graph executor needs root (overlayfs mounts, network namespaces)"
    missing = [tool for tool in ("bwrap", "mmdebstrap", "unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return f"the graph executor needs {', '.join(missing)}: sudo apt-get install -y bubblewrap mmdebstrap iproute2 (make system-deps)"
    return None


@pytest.fixture(scope="session")
def executor_store() -> Iterator[dict[str, Any]]:
    """One layer store and one evaluation memo for the session (the engine dedupes identical operations)."""
    why = _executor_prerequisites()
    if why:
        # `make test-executed` (and so .ci/run) requires the executor: there a missing tool is a failure. Run
        # elsewhere, e.g. by `dagger call test` inside a container without bwrap, the tests say why they skip.
        if os.environ.get("MLCI_EXECUTOR_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    from .executor.evaluate import ExecCache
    from .executor.rootfs import cache_root

    for kept in ("execs", "blobs", "pulled"):  # exec results, layer blobs made from them, pulled layers
        ExecCache(cache_root() / kept).prune()
    root = cache_root() / "work"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"s{os.getpid()}-", dir=root))
    try:
        yield {"work": work, "memo": {}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def executed(engine: FakeEngine, executor_store: dict[str, Any]) -> Any:
    """The FakeEngine with the executor plugged in: value queries are answered by running the graph."""
    from .executor import network
    from .executor.evaluate import Executor

    return Executor(engine, executor_store["work"], network=network, memo=executor_store["memo"])


@pytest.fixture
def xcall(executed: Any, registered: tuple[str, dict[str, Fn], Fn]) -> Caller:
    """`dagger call` against the executor: --source/--mlci-source loaded as the engine loads a DefaultPath
    argument (the repository, filtered by the argument's Ignore patterns: core/modfunc.go), then the function."""
    import mlci_dagger  # noqa: F401
    from dagger import dag
    from dagger.mod import default_module

    _, _, ctor = registered

    def run(
        function: str, *, ctor_args: dict[str, Any] | None = None, source: Path = REPO, **inputs: Any
    ) -> Any:
        async def go() -> Any:
            ids = {
                name: await dag.host()
                .directory(str(source if name == "source" else REPO), exclude=ctor.args[name].ignore or [])
                .id()
                for name in ("source", "mlci_source")
            }
            mod = default_module()
            state = await mod.get_result("Mlci", {}, "", {**ids, **(ctor_args or {})})
            return await mod.get_result("Mlci", state, function, inputs)

        return anyio.run(go)

    return run
