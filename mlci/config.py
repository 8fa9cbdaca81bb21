"""`mlci.toml`: one file per model repository, validated on load."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlci.errors import ConfigError

__all__ = ["Config", "DataConfig", "EstimatorConfig", "EvaluateConfig", "ExportConfig", "load_config", "parse_config"]

TASKS = ("classification", "regression")
FEATURE_KINDS = ("numeric", "categorical")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")

_KNOWN: dict[str, tuple[str, ...]] = {
    "": ("model", "data", "split", "estimator", "export", "evaluate", "workspace"),
    "model": ("name", "task"),
    "data": ("path", "target", "features", "drop"),
    "split": ("holdout", "seed"),
    "estimator": ("class", "params", "scale", "factory"),
    "export": ("target_opset", "abs_tolerance", "rel_tolerance"),
    "evaluate": ("latency_runs", "profile_bins", "outlier_estimators"),
    "workspace": ("path",),
}


def _unknown_keys(table: Mapping[str, Any], section: str) -> None:
    allowed = _KNOWN[section]
    for key in table:
        if key not in allowed:
            where = f"[{section}]" if section else "the top level"
            hint = difflib.get_close_matches(key, allowed, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"Unknown key {key!r} in {where} of mlci.toml.{did_you_mean} Allowed keys: {', '.join(allowed)}."
            )


def _get(table: Mapping[str, Any], section: str, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"[{section}] {key} is required in mlci.toml but missing.")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a flag given where a number is expected is a mistake, not a 1.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"[{section}] {key} must be {names}; got {value!r} ({type(value).__name__}).")
    return value


def _section(raw: Mapping[str, Any], name: str, required: bool = False) -> Mapping[str, Any]:
    if name not in raw:
        if required:
            raise ConfigError(f"mlci.toml has no [{name}] table; it is required.")
        return {}
    table = raw[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name} in mlci.toml must be a table ([{name}]); got {table!r}.")
    _unknown_keys(table, name)
    return table


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it."""

    path: Path
    target: str
    features: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class EstimatorConfig:
    """Either a declarative spec (``class`` + ``params``) or a ``factory`` = ``module:function``."""

    class_path: str | None
    params: Mapping[str, Any]
    scale: bool
    factory: str | None


@dataclass(frozen=True)
class ExportConfig:
    """ONNX conversion and parity tolerances."""

    target_opset: int = 17
    abs_tolerance: float = 1e-5
    rel_tolerance: float = 1e-5


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation knobs."""

    latency_runs: int = 200
    profile_bins: int = 10
    outlier_estimators: int = 100


@dataclass(frozen=True)
class Config:
    """A validated `mlci.toml`. Relative paths are resolved against the file's directory."""

    path: Path
    name: str
    task: str
    data: DataConfig
    holdout: float
    seed: int
    estimator: EstimatorConfig
    export: ExportConfig
    evaluate: EvaluateConfig
    workspace: Path
    raw: Mapping[str, Any]

    @property
    def root(self) -> Path:
        """The directory holding `mlci.toml`."""
        return self.path.parent


def load_config(path: Path | str = "mlci.toml", workspace: Path | str | None = None) -> Config:
    """Read and validate `mlci.toml`; every error names the key, the bad value and what is allowed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file '{path}' does not exist. Run from your model repository, pass --config, "
            "or create one with `mlci init`."
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"'{path}' is not valid TOML: {exc}. Fix the syntax at that line.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"'{path}' is not UTF-8 text: {exc}.") from exc
    return parse_config(raw, path.resolve(), workspace)


def parse_config(raw: Mapping[str, Any], path: Path, workspace: Path | str | None = None) -> Config:
    """Validate an already-parsed TOML mapping (``path`` anchors relative paths)."""
    _unknown_keys(raw, "")
    root = path.parent

    model = _section(raw, "model", required=True)
    name = _get(model, "model", "name", str)
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"[model] name must be lowercase letters, digits and single '.', '_' or '-' separators "
            f"(it becomes a registry repository name); got {name!r}."
        )
    task = _get(model, "model", "task", str)
    if task not in TASKS:
        raise ConfigError(f"[model] task must be one of {', '.join(TASKS)}; got {task!r}.")

    data = _section(raw, "data", required=True)
    features = _get(data, "data", "features", dict, {})
    for col, kind in features.items():
        if kind not in FEATURE_KINDS:
            raise ConfigError(
                f"[data.features] {col} must be one of {', '.join(FEATURE_KINDS)}; got {kind!r}."
            )
    drop = _get(data, "data", "drop", list, [])
    if not all(isinstance(d, str) for d in drop):
        raise ConfigError(f"[data] drop must be a list of column names; got {drop!r}.")
    data_cfg = DataConfig(
        path=(root / _get(data, "data", "path", str)),
        target=_get(data, "data", "target", str),
        features=dict(features),
        drop=tuple(drop),
    )
    if data_cfg.target in data_cfg.features:
        raise ConfigError(f"[data] target {data_cfg.target!r} is also listed in [data.features]; remove it there.")

    split = _section(raw, "split")
    holdout = float(_get(split, "split", "holdout", (float, int), 0.2))
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"[split] holdout must be a fraction between 0 and 1 (exclusive); got {holdout!r}.")
    seed = _get(split, "split", "seed", int, 0)

    est = _section(raw, "estimator", required=True)
    class_path = _get(est, "estimator", "class", str, None)
    factory = _get(est, "estimator", "factory", str, None)
    if (class_path is None) == (factory is None):
        raise ConfigError(
            "[estimator] needs exactly one of 'class' (e.g. \"sklearn.linear_model.LogisticRegression\") "
            "or 'factory' (\"module:function\" returning an unfitted estimator); "
            f"got {'both' if class_path else 'neither'}."
        )
    if factory is not None and factory.count(":") != 1:
        raise ConfigError(f"[estimator] factory must look like 'module:function'; got {factory!r}.")
    params = _get(est, "estimator", "params", dict, {})
    if factory is not None and params:
        raise ConfigError("[estimator] params only apply to 'class'; a factory sets its own parameters.")
    est_cfg = EstimatorConfig(
        class_path=class_path, params=dict(params), scale=_get(est, "estimator", "scale", bool, True), factory=factory
    )

    exp = _section(raw, "export")
    export_cfg = ExportConfig(
        target_opset=_get(exp, "export", "target_opset", int, 17),
        abs_tolerance=float(_get(exp, "export", "abs_tolerance", (float, int), 1e-5)),
        rel_tolerance=float(_get(exp, "export", "rel_tolerance", (float, int), 1e-5)),
    )
    if not 9 <= export_cfg.target_opset <= 21:
        raise ConfigError(f"[export] target_opset must be between 9 and 21; got {export_cfg.target_opset}.")
    for key in ("abs_tolerance", "rel_tolerance"):
        if getattr(export_cfg, key) < 0:
            raise ConfigError(f"[export] {key} must be >= 0; got {getattr(export_cfg, key)}.")

    ev = _section(raw, "evaluate")
    eval_cfg = EvaluateConfig(
        latency_runs=_get(ev, "evaluate", "latency_runs", int, 200),
        profile_bins=_get(ev, "evaluate", "profile_bins", int, 10),
        outlier_estimators=_get(ev, "evaluate", "outlier_estimators", int, 100),
    )
    for key, low in (("latency_runs", 10), ("profile_bins", 2), ("outlier_estimators", 1)):
        if getattr(eval_cfg, key) < low:
            raise ConfigError(f"[evaluate] {key} must be >= {low}; got {getattr(eval_cfg, key)}.")

    ws = _section(raw, "workspace")
    ws_path = Path(workspace) if workspace is not None else root / _get(ws, "workspace", "path", str, ".mlci")

    return Config(
        path=path,
        name=name,
        task=task,
        data=data_cfg,
        holdout=holdout,
        seed=seed,
        estimator=est_cfg,
        export=export_cfg,
        evaluate=eval_cfg,
        workspace=ws_path,
        raw=raw,
    )
