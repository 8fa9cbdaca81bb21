"""`mlci init`: a starter mlci.toml (schema inferred from a data file) and the CI vendor configs.

Registered on the main group by :func:`register`. pandas is imported inside the command only, so
`mlci --help` stays free of the ML libraries.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import click

__all__ = [
    "BadInput",
    "CI_FILES",
    "GITIGNORE_LINES",
    "MODULE_REPOSITORY",
    "default_module",
    "gitignore_update",
    "register",
    "render_ci",
    "render_config",
    "template",
]

# Where each vendor's config goes in a repository, and the template it is a copy of.
CI_FILES = {
    "github": (Path(".github/workflows/mlci.yml"), "github-workflow.yml"),
    "gitlab": (Path(".gitlab-ci.yml"), "gitlab-ci.yml"),
}
_MAX_CLASSES = 20  # an integer target with at most this many distinct values is read as class labels
# Where mlci's Dagger module is published (dagger.json at the repository root), as Dagger's module
# reference: host/owner/repo, to which `@<version>` is added (core/modulerefs.go, ParseGitRefString).
MODULE_REPOSITORY = "github.com/ORG/mlci"
# A git module reference pinned at a ref: an optional scheme, a host with a dot, a path, '@' and the ref. Only
# characters that need no quoting in YAML, a GitHub expression string or the shell.
_GIT_MODULE = re.compile(
    r"(?:https://|ssh://|git@)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+[/:][A-Za-z0-9._~/-]+(?:@[A-Za-z0-9._~/+-]+)?"
)
_LOCAL_MODULE = re.compile(r"\.{1,2}(?:/[A-Za-z0-9._~-]+)*/?")
_PLACEHOLDER = re.compile(r"@MLCI_[A-Z]+@")
# What `mlci init` adds to the repository's .gitignore: the workspace (stage cache, artifacts, the local
# registry, deployed servers and their prediction logs) and a prediction log and monitor state kept in the
# repository (`mlci serve --log-dir predictions`; the monitor's state defaults to <log-dir>/../monitor-state).
GITIGNORE = Path(".gitignore")
GITIGNORE_LINES = (".mlci/", "/predictions/", "/monitor-state/")
_GITIGNORE_HEADER = (
    "# mlci: workspace (stage cache, artifacts, local registry, deploys), prediction log, monitor state"
)


class BadInput(click.ClickException):
    """A refusal caused by what the user gave or has on disk: exit 2, as the README says for `mlci init`."""

    exit_code = 2


def default_module() -> str:
    """The mlci Dagger module at the release of the installed mlci: what generated CI calls by default."""
    from mlci import __version__

    return f"{MODULE_REPOSITORY}@v{__version__}"


def template(name: str) -> str:
    """The text of one of mlci's bundled templates."""
    return resources.files("mlci").joinpath("templates", name).read_text(encoding="utf-8")


def render_ci(name: str, *, module: str, config: str, checks: bool) -> str:
    """A CI template with its defaults filled in: the Dagger module, the mlci.toml path, lint + test on/off."""
    values = {
        "@MLCI_MODULE@": module,
        "@MLCI_CONFIG@": config,
        "@MLCI_CHECKS@": "true" if checks else "false",
    }
    text = template(name)
    for placeholder, value in values.items():
        if placeholder not in text:
            raise ValueError(
                f"mlci/templates/{name} has no {placeholder}; every CI template takes all of {sorted(values)}."
            )
        text = text.replace(placeholder, value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"mlci/templates/{name} has placeholders nothing fills: {sorted(set(left))}.")
    return text


def check_module(module: str, root: Path) -> str:
    """``module`` if CI in ``root`` can call it: a pinned git reference, or a directory of the repository
    holding a dagger.json. A click.BadParameter that says what was expected otherwise."""
    example = f"e.g. {default_module()}"
    if _LOCAL_MODULE.fullmatch(module):
        if not (root / module / "dagger.json").is_file():
            raise click.BadParameter(
                f"'{module}' has no dagger.json in '{root}': CI runs in your repository's checkout, where that "
                f"path holds no Dagger module. Pass the mlci module's git address pinned at a release, {example}, "
                "or the path of a vendored copy of it.",
                param_hint="--module",
            )
        return module
    if not _GIT_MODULE.fullmatch(module):
        raise click.BadParameter(
            f"expected a Dagger module address, host/owner/repo[/subdir]@ref ({example}) or a './path' in the "
            f"repository; got {module!r}.",
            param_hint="--module",
        )
    if "@" not in module.split("/", 1)[-1]:
        raise click.BadParameter(
            f"'{module}' is not pinned: without @<tag or commit> every CI run takes whatever the default branch "
            f"holds then. Add the release, {module}@v…, {example}.",
            param_hint="--module",
        )
    return module


def _ignore_key(line: str) -> str:
    """A .gitignore line as a comparable pattern: '.mlci', '/.mlci' and '.mlci/' all keep .mlci/ out."""
    return line.strip().strip("/")


def gitignore_update(root: Path) -> tuple[str | None, list[str]]:
    """(the new .gitignore text or None when nothing is missing, the lines it adds).

    An existing .gitignore keeps every line of its own; only the missing GITIGNORE_LINES are appended.
    """
    path = root / GITIGNORE
    if path.exists() and not path.is_file():
        raise BadInput(
            f"'{GITIGNORE}' in '{root}' is not a file; mlci init adds ignore lines to it. Remove or rename it."
        )
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
    except UnicodeDecodeError:
        raise BadInput(
            f"'{GITIGNORE}' in '{root}' is not UTF-8 text; fix it, then run mlci init again."
        ) from None
    present = {_ignore_key(line) for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if _ignore_key(line) not in present]
    if not missing:
        return None, []
    prefix = text if not text or text.endswith("\n") else text + "\n"
    separator = "\n" if prefix else ""
    return prefix + separator + "\n".join([_GITIGNORE_HEADER, *missing]) + "\n", missing


def _is_python_project(root: Path) -> bool:
    """Whether ``root`` has a Python project definition, which the module's lint + test need."""
    return any((root / name).is_file() for name in ("pyproject.toml", "setup.py"))


def _model_name(text: str) -> str:
    """A registry-safe model name from a directory name: lowercase, single '-' separators."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return name or "model"


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's string escapes are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def render_config(name: str, task: str, data: str, target: str, features: dict[str, str]) -> str:
    """mlci.toml text for one model: every key the user is likely to change, with the inferred schema."""
    estimator = (
        'class = "sklearn.linear_model.LogisticRegression"\nparams = { C = 1.0, max_iter = 1000 }'
        if task == "classification"
        else 'class = "sklearn.linear_model.Ridge"\nparams = { alpha = 1.0 }'
    )
    feature_lines = "\n".join(f'{_toml_key(col)} = "{kind}"' for col, kind in features.items())
    return f"""# Written by `mlci init`; the schema below was inferred from {data}. Check it, then run `mlci run`.
[model]
name = "{name}"
task = "{task}"

[data]
path = {_toml_str(data)}
target = {_toml_str(target)}
drop = []  # columns to leave out of the model; a column here is no feature even if listed below

[data.features]
{feature_lines}

[split]
holdout = 0.25
seed = 7

[estimator]
{estimator}
scale = true

[gate]
baseline = "trivial"  # the model must beat the majority class (mean for regression) with confidence; "none" opts out

# Where `mlci push` puts artifacts (default: an OCI layout under .mlci/). For CI, a registry:
# [registry]
# url = "https://ghcr.io"
# repository = "acme/{name}"
"""


def _infer(path: Path, data: Path, target: str | None, task: str | None) -> tuple[str, str, dict[str, str]]:
    """(target, task, features) from the file at ``path`` (shown as ``data``), with mlci's own reading and
    type-inference rules, so the schema written is the one `mlci train` would infer."""
    import pandas as pd

    from mlci.model.data import infer_kind, read_table

    if not path.is_file():
        raise click.BadParameter(f"'{data}' does not exist or is not a file.", param_hint="DATA")
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise BadInput(f"'{data}' has a header but no data rows; mlci init needs rows to infer types from.")
    if target is None:
        if "target" not in columns:
            raise click.UsageError(
                f"Which column is the target? Pass --target; '{data}' has columns {columns}."
            )
        target = "target"
    if target not in columns:
        hint = difflib.get_close_matches(target, columns, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise click.BadParameter(
            f"'{data}' has no column {target!r}.{did_you_mean} Columns: {columns}.", param_hint="--target"
        )
    features = {col: infer_kind(frame[col]) for col in columns if col != target}
    if not features:
        raise BadInput(f"'{data}' holds only the target column {target!r}; a model needs feature columns.")
    if task is None:
        y = frame[target]
        numeric = infer_kind(y) == "numeric"
        values = pd.to_numeric(y, errors="coerce").dropna() if numeric else None
        few_integers = (
            values is not None and bool((values % 1 == 0).all()) and values.nunique() <= _MAX_CLASSES
        )
        task = "regression" if numeric and not few_integers else "classification"
    return target, task, features


def register(group: click.Group) -> None:
    """Add `init` to ``group``."""

    @group.command()
    @click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--target", default=None, help="Target column (default: a column named 'target').")
    @click.option(
        "--task",
        type=click.Choice(["classification", "regression"]),
        default=None,
        help="Default: inferred from the target column.",
    )
    @click.option("--name", default=None, help="Model name (default: the repository directory's name).")
    @click.option(
        "--dir",
        "root",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="The repository to write into.",
    )
    @click.option(
        "--ci",
        "vendors",
        type=click.Choice(["github", "gitlab", "none"]),
        multiple=True,
        default=("github", "gitlab"),
        show_default=True,
        help="CI vendor configs to write (repeat the option).",
    )
    @click.option(
        "--module",
        default=None,
        help="The mlci Dagger module CI calls: a pinned git address (default: mlci's repository at this mlci's "
        "release tag) or a ./path in the repository.",
    )
    @click.option(
        "--checks/--no-checks",
        default=None,
        help="Run lint + test in CI (default: on when the repository has a pyproject.toml or setup.py).",
    )
    @click.option("--force", is_flag=True, help="Overwrite files that already exist.")
    def init(
        data: Path, target: str | None, task: str | None, name: str | None, root: Path, vendors: tuple[str, ...],
        module: str | None, checks: bool | None, force: bool,
    ) -> None:  # fmt: skip
        """Scaffold mlci.toml (schema inferred from DATA) and the CI configs into an existing repository."""
        from mlci.config import parse_config

        if not root.is_dir():
            raise click.BadParameter(
                f"'{root}' is not a directory; mlci init writes into an existing repository.",
                param_hint="--dir",
            )
        root = root.resolve()
        module = check_module(module or default_module(), root)
        checks_why = "as asked" if checks is not None else None
        if checks is None:
            checks = _is_python_project(root)
            checks_why = (
                "the repository has a pyproject.toml or setup.py"
                if checks
                else "no pyproject.toml or setup.py"
            )
        data_abs = data if data.is_absolute() else Path.cwd() / data
        try:
            data_rel = data_abs.resolve().relative_to(root)
        except ValueError:
            raise click.BadParameter(
                f"'{data}' is outside '{root}'; put the data inside the repository.", param_hint="DATA"
            ) from None
        target, task, features = _infer(root / data_rel, data, target, task)
        text = render_config(_model_name(name or root.name), task, data_rel.as_posix(), target, features)
        parse_config(tomllib.loads(text), root / "mlci.toml")  # what we write must load

        config_path = Path("mlci.toml")
        files: dict[Path, str] = {config_path: text}
        for vendor in vendors:
            if vendor != "none":
                path, template_name = CI_FILES[vendor]
                files[path] = render_ci(
                    template_name, module=module, config=config_path.as_posix(), checks=checks
                )
        existing = [str(p) for p in files if (root / p).exists()]
        if existing and not force:
            raise BadInput(
                f"Not overwriting {', '.join(existing)} in '{root}'; pass --force to replace them."
            )
        ignore_text, ignore_added = gitignore_update(root)
        for path, content in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(content, encoding="utf-8")
        if ignore_text is not None:
            (root / GITIGNORE).write_text(ignore_text, encoding="utf-8")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(_count(features).items()))
        click.echo(f"wrote {', '.join(str(p) for p in files)} in {root}")
        if ignore_added:
            click.echo(f"  {GITIGNORE}: added {', '.join(ignore_added)}")
        else:
            click.echo(f"  {GITIGNORE} already ignores {', '.join(GITIGNORE_LINES)}")
        click.echo(f"  task {task}, target {target!r}, {len(features)} features ({kinds})")
        if len(files) > 1:
            click.echo(
                f"  CI calls the mlci Dagger module {module} (--module, or the CI variable MLCI_MODULE, to change)"
            )
            click.echo(
                f"  CI: lint + test {'on' if checks else 'off'} ({checks_why}; --checks/--no-checks to change)"
            )
        click.echo("next: mlci run")


def _count(features: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in features.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts
