"""Read the SDK's module registration (the TypeDef graph `Module.register()` builds) back into plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .engine import FakeEngine


@dataclass
class Arg:
    type: str
    doc: str
    default: Any = None
    default_path: str | None = None
    ignore: list[str] | None = None


@dataclass
class Fn:
    returns: str
    doc: str = ""
    args: dict[str, Arg] = field(default_factory=dict)
    check: bool = False
    cache: str | None = None


def type_name(engine: FakeEngine, typedef_id: str) -> str:
    g = engine.graph(typedef_id)
    optional = any(s.field == "withOptional" and s.args["optional"] for s in g)
    for s in g:
        if s.field == "withKind":
            name = {"STRING_KIND": "String", "BOOLEAN_KIND": "Boolean", "INTEGER_KIND": "Int"}.get(s.args["kind"], s.args["kind"])
        elif s.field in ("withObject", "withScalar"):  # a scalar such as Platform: the CLI's platformValue
            name = s.args["name"]
        elif s.field == "withListOf":
            name = f"[{type_name(engine, s.args['elementType'])}]"
    return name + ("" if optional else "!")


def function_of(engine: FakeEngine, function_id: str) -> tuple[str, Fn]:
    g = engine.graph(function_id)
    head = g.one("function")
    fn = Fn(returns=type_name(engine, head["returnType"]))
    for s in g.steps[1:]:
        if s.field == "withDescription":
            fn.doc = s.args["description"]
        elif s.field == "withCheck":
            fn.check = True
        elif s.field == "withCachePolicy":
            fn.cache = s.args["policy"]
        elif s.field == "withArg":
            a = s.args
            fn.args[a["name"]] = Arg(
                type_name(engine, a["typeDef"]), a.get("description") or "",
                None if a.get("defaultValue") in (None, "null") else json.loads(a["defaultValue"]),
                a.get("defaultPath"), a.get("ignore"),
            )  # fmt: skip
    return head["name"], fn
