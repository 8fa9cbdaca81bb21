"""Does the real mlci CLI accept an argv the Dagger module puts in a container?

Parses with the command's own click parser: unknown options, missing required parameters, stray
arguments and values outside a Choice all fail. Paths are not checked for existence here (they are
container paths); the local replay tests run the same argv for real.
"""

from __future__ import annotations

import click

from mlci.cli import cli


def assert_cli_accepts(argv: list[str]) -> dict[str, object]:
    """The parsed options of ``argv`` (which must start with 'mlci'), or an AssertionError saying why not."""
    if argv[:1] != ["mlci"]:
        raise AssertionError(f"not an mlci command line: {argv}")
    root = click.Context(cli, info_name="mlci")
    command = cli.get_command(root, argv[1])
    if command is None:
        raise AssertionError(f"mlci has no command {argv[1]!r}; it has {sorted(cli.list_commands(root))}")
    ctx = click.Context(command, info_name=argv[1], parent=root)
    try:
        opts, extra, _ = command.make_parser(ctx).parse_args(list(argv[2:]))
    except click.UsageError as exc:
        raise AssertionError(f"mlci {argv[1]} rejects {argv[2:]}: {exc}") from exc
    if extra:
        raise AssertionError(f"mlci {argv[1]} got stray arguments {extra}")
    for param in command.params:
        value = opts.get(param.name)
        if param.required and value is None:
            raise AssertionError(f"mlci {argv[1]} needs {param.opts} but {argv} lacks it")
        if isinstance(param.type, click.Choice) and value is not None and value not in param.type.choices:
            raise AssertionError(f"mlci {argv[1]} {param.opts}: {value!r} is not one of {param.type.choices}")
    return opts
