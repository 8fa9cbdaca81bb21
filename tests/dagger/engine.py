"""A stand-in for the Dagger engine's GraphQL endpoint: validates and records every query the SDK sends.

No engine can run on the build machines, so this answers in its place: the real `dagger-io` objects
build the real queries (through the SDK's own Context, DSL builder and ID resolution), each query is
validated with graphql-core against the engine's published schema, and answered with synthetic IDs
(or values a test supplies). Every ID maps back to the chain of fields that produced it, so a test can
read the whole graph a function built: images, exec argv, mounts, secrets, services, published addresses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import graphql
from gql.transport.exceptions import TransportQueryError


@dataclass(frozen=True)
class Step:
    """One field of a query chain: the object type it is selected on, its name and its arguments."""

    on: str
    field: str
    args: dict[str, Any]


@dataclass
class Recorded:
    """One query as sent: its text and the chain it selects (node(id:) expanded)."""

    text: str
    chain: list[Step]


Responder = Callable[[list[Step], "FakeEngine"], Any]


class ExecFailure(Exception):
    """Raise from a responder to answer like the engine does for a failed exec (an EXEC_ERROR)."""

    def __init__(self, cmd: list[str], exit_code: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(f"process {cmd} did not complete successfully: exit code: {exit_code}")
        self.cmd, self.exit_code, self.stdout, self.stderr = cmd, exit_code, stdout, stderr


class FakeEngine:
    """The session object the SDK talks to (``get_schema`` + ``execute``)."""

    def __init__(self, schema: graphql.GraphQLSchema) -> None:
        self.schema = schema
        self.queries: list[Recorded] = []
        self.objects: dict[str, tuple[str, list[Step]]] = {}  # id -> (type name, chain)
        self.responders: list[Responder] = []
        self._ids = itertools.count(1)

    # -- the two methods the SDK calls -------------------------------------------------------------

    async def get_schema(self) -> graphql.GraphQLSchema:
        return self.schema

    async def execute(self, request: Any) -> Any:
        document = request.document
        text = graphql.print_ast(document)
        errors = graphql.validate(self.schema, document)
        if errors:
            raise AssertionError(f"Query rejected by the v0.21.8 schema: {[e.message for e in errors]}\n{text}")
        chain, fields = self._chain(document)
        self.queries.append(Recorded(text, chain))
        try:
            value = self._answer(chain)
        except ExecFailure as exc:
            raise TransportQueryError(
                str(exc),
                errors=[{
                    "message": str(exc),
                    "path": [s.field for s in chain],
                    "extensions": {
                        "_type": "EXEC_ERROR", "cmd": exc.cmd, "exitCode": exc.exit_code,
                        "stdout": exc.stdout, "stderr": exc.stderr,
                    },
                }],
            ) from exc  # fmt: skip
        for name in reversed(fields):
            value = {name: value}
        return value

    # -- reading the graph -------------------------------------------------------------------------

    def chain_of(self, object_id: str) -> list[Step]:
        """The chain of fields that produced ``object_id``."""
        return self.objects[object_id][1]

    def same(self, a: str, b: str) -> bool:
        """Whether two IDs name the same object (an ID passed through node(id:) comes back renamed)."""
        return self.objects[a] == self.objects[b]

    def type_of(self, object_id: str) -> str:
        return self.objects[object_id][0]

    def graph(self, object_id: str) -> Graph:
        return Graph(self, self.chain_of(object_id))

    def last(self, leaf: str) -> Recorded:
        """The most recent query ending in ``leaf`` (e.g. 'publish', 'stdout', 'id')."""
        for q in reversed(self.queries):
            if q.chain[-1].field == leaf:
                return q
        raise AssertionError(f"No query ending in {leaf!r}; leaves sent: {[q.chain[-1].field for q in self.queries]}")

    def all(self, leaf: str) -> list[Recorded]:
        return [q for q in self.queries if q.chain[-1].field == leaf]

    # -- internals ---------------------------------------------------------------------------------

    def _chain(self, document: graphql.DocumentNode) -> tuple[list[Step], list[str]]:
        (operation,) = document.definitions
        assert isinstance(operation, graphql.OperationDefinitionNode)
        selections = operation.selection_set.selections
        on: str = "Query"
        chain: list[Step] = []
        names: list[str] = []
        while selections:
            if len(selections) != 1:
                raise NotImplementedError(f"multi-field selections are not answered here: {selections}")
            (node,) = selections
            assert isinstance(node, graphql.FieldNode)
            args = {a.name.value: graphql.value_from_ast_untyped(a.value) for a in node.arguments or ()}
            names.append(node.name.value)
            children = node.selection_set.selections if node.selection_set else ()
            if node.name.value == "node":
                (fragment,) = children
                assert isinstance(fragment, graphql.InlineFragmentNode)
                on, chain = fragment.type_condition.name.value, list(self.chain_of(args["id"]))
                selections = fragment.selection_set.selections
                continue
            chain.append(Step(on, node.name.value, args))
            field_def = self.schema.type_map[on].fields[node.name.value]  # type: ignore[union-attr]
            on = graphql.get_named_type(field_def.type).name
            selections = children
        return chain, names

    def _answer(self, chain: list[Step]) -> Any:
        for responder in self.responders:
            value = responder(chain, self)
            if value is not None:
                return value
        leaf = chain[-1]
        if leaf.field in ("id", "sync"):
            object_id = f"{leaf.on}:{next(self._ids)}"
            self.objects[object_id] = (leaf.on, chain[:-1])
            return object_id
        if leaf.field == "publish":
            return f"{leaf.args['address']}@sha256:{'ab' * 32}"
        if leaf.field in ("stdout", "stderr", "contents"):
            return ""
        if leaf.field == "exitCode":  # an exec with expect: ANY that a test did not make fail
            return 0
        if leaf.field == "entries":
            return []
        if leaf.field == "export":
            return leaf.args["path"]
        raise NotImplementedError(f"no answer for {leaf}")


@dataclass
class Graph:
    """The chain that built one object, with helpers to read what it asks the engine for."""

    engine: FakeEngine
    steps: list[Step] = field(default_factory=list)

    def calls(self, name: str) -> list[dict[str, Any]]:
        """The arguments of every ``name`` step, in order."""
        return [s.args for s in self.steps if s.field == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.calls(name)
        if len(found) != 1:
            raise AssertionError(f"expected one {name!r}, found {len(found)}: {found}")
        return found[0]

    def execs(self) -> list[list[str]]:
        return [args["args"] for args in self.calls("withExec")]

    def arg(self, args: dict[str, Any], name: str) -> Graph:
        """The graph of an object passed by ID as argument ``name``."""
        return self.engine.graph(args[name])

    def fields(self) -> list[str]:
        return [s.field for s in self.steps]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def after(self, name: str) -> Graph:
        """The steps after the last ``name`` step (what was added on top of it)."""
        idx = max(i for i, s in enumerate(self.steps) if s.field == name)
        return Graph(self.engine, self.steps[idx + 1 :])

    def before(self, name: str) -> Graph:
        idx = min(i for i, s in enumerate(self.steps) if s.field == name)
        return Graph(self.engine, self.steps[:idx])
