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

__all__ = ["CI_FILES", "register", "render_config", "template"]

# Where each vendor's config goes in a repository, and the template it is a copy of.
CI_FILES = {
    "github": (Path(".github/workflows/mlci.yml"), "github-workflow.yml"),
    "gitlab": (Path(".gitlab-ci.yml"), "gitlab-ci.yml"),
}
_MAX_CLASSES = 20  # an integer target with at most this many distinct values is read as class labels


def template(name: str) -> str:
    """The text of one of mlci's bundled templates."""
    return resources.files("mlci").joinpath("templates", name).read_text(encoding="utf-8")


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

[data.features]
{feature_lines}

[split]
holdout = 0.25
seed = 7

[estimator]
{estimator}
scale = true

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
        raise click.ClickException(f"'{data}' has a header but no data rows; mlci init needs rows to infer types from.")
    if target is None:
        if "target" not in columns:
            raise click.UsageError(f"Which column is the target? Pass --target; '{data}' has columns {columns}.")
        target = "target"
    if target not in columns:
        hint = difflib.get_close_matches(target, columns, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise click.BadParameter(f"'{data}' has no column {target!r}.{did_you_mean} Columns: {columns}.", param_hint="--target")
    features = {col: infer_kind(frame[col]) for col in columns if col != target}
    if not features:
        raise click.ClickException(f"'{data}' holds only the target column {target!r}; a model needs feature columns.")
    if task is None:
        y = frame[target]
        numeric = infer_kind(y) == "numeric"
        values = pd.to_numeric(y, errors="coerce").dropna() if numeric else None
        few_integers = values is not None and bool((values % 1 == 0).all()) and values.nunique() <= _MAX_CLASSES
        task = "regression" if numeric and not few_integers else "classification"
    return target, task, features


def register(group: click.Group) -> None:
    """Add `init` to ``group``."""

    @group.command()
    @click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--target", default=None, help="Target column (default: a column named 'target').")
    @click.option("--task", type=click.Choice(["classification", "regression"]), default=None, help="Default: inferred from the target column.")
    @click.option("--name", default=None, help="Model name (default: the repository directory's name).")
    @click.option(
        "--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
        help="The repository to write into.",
    )
    @click.option(
        "--ci", "vendors", type=click.Choice(["github", "gitlab", "none"]), multiple=True, default=("github", "gitlab"),
        show_default=True, help="CI vendor configs to write (repeat the option).",
    )
    @click.option("--force", is_flag=True, help="Overwrite files that already exist.")
    def init(data: Path, target: str | None, task: str | None, name: str | None, root: Path, vendors: tuple[str, ...], force: bool) -> None:
        """Scaffold mlci.toml (schema inferred from DATA) and the CI configs into an existing repository."""
        from mlci.config import parse_config

        if not root.is_dir():
            raise click.BadParameter(f"'{root}' is not a directory; mlci init writes into an existing repository.", param_hint="--dir")
        root = root.resolve()
        data_abs = data if data.is_absolute() else Path.cwd() / data
        try:
            data_rel = data_abs.resolve().relative_to(root)
        except ValueError:
            raise click.BadParameter(f"'{data}' is outside '{root}'; put the data inside the repository.", param_hint="DATA") from None
        target, task, features = _infer(root / data_rel, data, target, task)
        text = render_config(_model_name(name or root.name), task, data_rel.as_posix(), target, features)
        parse_config(tomllib.loads(text), root / "mlci.toml")  # what we write must load

        files: dict[Path, str] = {Path("mlci.toml"): text}
        for vendor in vendors:
            if vendor != "none":
                path, template_name = CI_FILES[vendor]
                files[path] = template(template_name)
        existing = [str(p) for p in files if (root / p).exists()]
        if existing and not force:
            raise click.ClickException(f"Not overwriting {', '.join(existing)} in '{root}'; pass --force to replace them.")
        for path, content in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(content, encoding="utf-8")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(_count(features).items()))
        click.echo(f"wrote {', '.join(str(p) for p in files)} in {root}")
        click.echo(f"  task {task}, target {target!r}, {len(features)} features ({kinds})")
        if len(files) > 1:
            click.echo("  CI: set MLCI_MODULE to where the mlci Dagger module lives (e.g. github.com/ORG/mlci@v0.1.0)")
        click.echo("next: mlci run")


def _count(features: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in features.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts
