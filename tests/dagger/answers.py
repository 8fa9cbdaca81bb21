"""Responders for the FakeEngine: what the engine answers for the execs and files the module reads.

An exec run with ``expect: ANY`` does not fail the query; the module reads its ``exitCode``, ``stdout``,
``stderr`` and the files it wrote. These helpers answer those leaves for one command (by argv prefix), the
way the engine does (core/schema/container.go: exitCode/stdout/stderr of the last exec).
"""

from __future__ import annotations

import json
from typing import Any

from .engine import ExecFailure, FakeEngine, Step

REMOTE_TOML = '[model]\nname = "bc"\n[registry]\nurl = "https://ghcr.io"\nrepository = "acme/bc"\n'
SERVICE_TOML = '[model]\nname = "bc"\n[registry]\nurl = "http://registry:5000"\nrepository = "acme/bc"\n'


def last_exec(chain: list[Step]) -> list[str]:
    """The argv of the last withExec in ``chain`` (empty when there is none)."""
    return next((s.args["args"] for s in reversed(chain) if s.field == "withExec"), [])


def answer_exec(
    engine: FakeEngine, prefix: list[str], exit_code: int = 0, stdout: str = "", stderr: str = "",
    files: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Answer the exec whose argv starts with ``prefix``: its exit code, output and the files it wrote.

    With ``expect: SUCCESS`` (the default) a non-zero exit fails the query, as the engine does.
    """

    def respond(chain: list[Step], _: FakeEngine) -> Any:
        leaf = chain[-1].field
        if leaf == "contents" and chain[-2].field == "file" and files and chain[-2].args["path"] in files:
            if last_exec(chain[:-2])[: len(prefix)] == prefix:
                return files[chain[-2].args["path"]]
            return None
        if chain[-2].field != "withExec" or chain[-2].args["args"][: len(prefix)] != prefix:
            return None
        expect = chain[-2].args.get("expect", "SUCCESS")
        if exit_code and expect == "SUCCESS" and leaf in ("stdout", "stderr", "sync", "exitCode"):
            raise ExecFailure(chain[-2].args["args"], exit_code, stdout=stdout, stderr=stderr)
        return {"exitCode": exit_code, "stdout": stdout, "stderr": stderr}.get(leaf)

    engine.responders.insert(0, respond)


def verdict(passed: bool) -> str:
    return json.dumps({"passed": passed, "first_run": True, "checks": []})


def answer_config(engine: FakeEngine, text: str, path: str = "mlci.toml") -> None:
    """Answer ``source.file(path).contents()`` (the module reading mlci.toml) with ``text``."""

    def respond(chain: list[Step], _: FakeEngine) -> str | None:
        if chain[-1].field == "contents" and chain[-2].field == "file" and chain[-2].args["path"] == path:
            return text
        return None

    engine.responders.append(respond)


def answer_entries(engine: FakeEngine, names: list[str]) -> None:
    """Answer ``source.entries()`` (the top-level names of the source directory)."""

    def respond(chain: list[Step], _: FakeEngine) -> list[str] | None:
        return names if chain[-1].field == "entries" else None

    engine.responders.append(respond)
