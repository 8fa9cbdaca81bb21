"""The stand-in engine rejects what the v0.21.8 schema rejects, so the graph tests can fail."""

from __future__ import annotations

import anyio
import pytest
from gql import GraphQLRequest

from .engine import FakeEngine


@pytest.mark.parametrize(
    "query",
    [
        '{ container { withExecc(args: ["true"]) { id } } }',  # misspelt field
        "{ container { from { id } } }",  # missing required argument
        '{ container { withExposedPort(port: "8080") { id } } }',  # wrong argument type
        '{ container { withExec(args: ["true"], expect: MAYBE) { id } } }',  # not an enum value
    ],
)
def test_invalid_queries_are_rejected(engine: FakeEngine, query: str) -> None:
    with pytest.raises(AssertionError, match=r"rejected by the v0\.21\.8 schema"):
        anyio.run(engine.execute, GraphQLRequest(query))
    assert not engine.queries


def test_a_valid_query_is_recorded_and_answered_with_an_id(engine: FakeEngine) -> None:
    answer = anyio.run(engine.execute, GraphQLRequest('{ container { from(address: "alpine") { id } } }'))
    object_id = answer["container"]["from"]["id"]
    assert engine.type_of(object_id) == "Container"
    assert [s.field for s in engine.chain_of(object_id)] == ["container", "from"]
