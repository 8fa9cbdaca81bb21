"""`dagger call …` argv run against the graph executor, converted as the Dagger CLI converts it.

dagger/dagger v0.21.8 ``cmd/dagger/call.go`` and ``cmd/dagger/flags.go``: constructor flags come before the
function name, function flags after it, each named in kebab-case; a Directory flag is a host path loaded
with the argument's Ignore patterns as exclude (``directoryValue.Get``), a File a host path, a Secret a
provider URI (``env://NAME``), a Platform the string as given (``platformValue``), a Boolean flag alone means true, a list is comma-separated; a chained
``export --path=P`` writes the returned Directory or File to P on the host. ``-m ADDRESS`` names the module:
here it is always this checkout's (a pinned remote address cannot be fetched on this machine; the test
asserts the address is pinned and names this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .registration import Fn

__all__ = ["CallResult", "run_call"]


@dataclass
class CallResult:
    module: str
    function: str
    value: Any  # the string a function returned, or the path an export wrote


def _snake(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _split(words: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Leading --flag[=value] words (a bare flag: None) and the rest."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(words) and words[i].startswith("--"):
        name, eq, value = words[i].partition("=")
        flags[_snake(name)] = value if eq else None
        i += 1
    return flags, words[i:]


async def _convert(value: str | None, arg: Any, cwd: Path) -> Any:
    import dagger
    from dagger import dag

    kind = arg.type.rstrip("!")
    if kind == "Boolean":
        return value is None or value.lower() == "true"
    if value is None:
        raise ValueError(f"flag needs a value (type {kind})")
    if kind == "Directory":
        return await dag.host().directory(str((cwd / value).resolve()), exclude=arg.ignore or []).id()
    if kind == "File":
        return await dag.host().file(str((cwd / value).resolve())).id()
    if kind == "Secret":
        return await dag.secret(value).id()
    if kind == "Int":
        return int(value)
    if kind == "Float":
        return float(value)
    if kind.startswith("["):
        return [v for v in value.split(",") if v]
    if kind in ("String",):
        return value
    if kind == "Platform":  # platformValue: the string as given, `current` the CLI host's (containerd's default)
        from platform import machine

        return {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(machine(), machine()) if value == "current" else value
    del dagger
    raise ValueError(f"the test CLI does not convert flags of type {kind}")


def run_call(argv: list[str], *, cwd: Path, functions: dict[str, Fn], ctor: Fn, repo: Path) -> CallResult:
    """Run one `dagger` argv (without 'dagger') through the SDK's invoke path against the executor."""
    import mlci_dagger  # noqa: F401
    from dagger.mod import default_module

    if argv[:1] != ["call"]:
        raise ValueError(f"only `dagger call` is run here; got {argv}")
    words = argv[1:]
    module = ""
    if words[:1] == ["-m"]:
        module, words = words[1], words[2:]
    ctor_flags, rest = _split(words)
    function, rest = _snake(rest[0]), rest[1:]
    fn_flags, chained = _split(rest)
    fn = functions[function]

    async def go() -> Any:
        import dagger

        ctor_inputs: dict[str, Any] = {}
        for name, arg in ctor.args.items():
            given = ctor_flags.pop(name, ...)
            if given is not ...:
                ctor_inputs[name] = await _convert(given, arg, cwd)
            elif arg.default_path is not None:  # DefaultPath: the module's own repository, with Ignore
                ctor_inputs[name] = await _convert(".", arg, repo)
        if ctor_flags:
            raise ValueError(
                f"unknown constructor flags {sorted(ctor_flags)}; the module takes {sorted(ctor.args)}"
            )
        inputs = {}
        for name, given in fn_flags.items():
            if name not in fn.args:
                raise ValueError(
                    f"{function} has no flag --{name.replace('_', '-')}; it takes {sorted(fn.args)}"
                )
            inputs[name] = await _convert(given, fn.args[name], cwd)
        mod = default_module()
        state = await mod.get_result("Mlci", {}, "", ctor_inputs)
        result = await mod.get_result("Mlci", state, function, inputs)
        if chained[:1] == ["export"]:
            (path,) = [w.split("=", 1)[1] for w in chained[1:] if w.startswith("--path=")]
            cls = dagger.Directory if fn.returns.rstrip("!") == "Directory" else dagger.File
            from dagger import dag

            await cls(dag._ctx.select_id(cls._graphql_name(), result)).export(str(cwd / path))
            return str(cwd / path)
        if chained:
            raise ValueError(f"the test CLI chains only export; got {chained}")
        return result

    return CallResult(module, function, anyio.run(go))


Runner = Callable[[list[str]], CallResult]
