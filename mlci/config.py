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

__all__ = [
    "Config",
    "DataConfig",
    "DeployConfig",
    "EstimatorConfig",
    "EvaluateConfig",
    "ExportConfig",
    "GateConfig",
    "RegistryConfig",
    "ReproducibilityConfig",
    "SmokeConfig",
    "load_config",
    "parse_config",
]

TASKS = ("classification", "regression")
FEATURE_KINDS = ("numeric", "categorical")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")

_KNOWN: dict[str, tuple[str, ...]] = {
    "": ("model", "data", "split", "estimator", "export", "evaluate", "workspace", "gate", "smoke", "registry", "deploy",
         "reproducibility"),
    "model": ("name", "task"),
    "data": ("path", "target", "features", "drop"),
    "split": ("holdout", "seed"),
    "estimator": ("class", "params", "scale", "factory", "trusted_types"),
    "export": ("target_opset", "abs_tolerance", "rel_tolerance"),
    "evaluate": ("latency_runs", "profile_bins", "outlier_estimators", "outlier_quantile"),
    "workspace": ("path",),
    "reproducibility": ("numerics",),
    "gate": (
        "min", "max", "non_inferiority", "require_better", "alpha", "bootstrap", "seed",
        "max_latency_p99_ms", "max_model_bytes", "require_smoke", "baseline", "min_compared_rows",
    ),
    "smoke": ("rows", "max_p99_ms", "timeout_s"),
    "registry": ("url", "repository", "insecure"),
    "deploy": (
        "target", "continuous_deployment", "host", "staging_port", "production_port", "check_timeout_s",
        "image", "namespace", "replicas", "kind", "cluster_registry", "rollout_timeout_s", "prediction_log_claim",
        "cpu_request", "memory_request", "cpu_limit", "memory_limit",
    ),
}
COMPARABLE = ("accuracy", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2")
TASK_METRICS = {
    "classification": ("accuracy", "f1", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
DEPLOY_TARGETS = ("local", "kubernetes")
NUMERICS_MODES = ("portable", "native")  # mlci.numerics.MODES (not imported: config stays light)
GATE_BASELINES = ("trivial", "none")


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


_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


def _quantity(table: Mapping[str, Any], key: str) -> str:
    """A Kubernetes resource quantity from [deploy] (e.g. "250m", "1Gi"), or "" to leave it out."""
    value: str = _get(table, "deploy", key, str, getattr(DeployConfig, key))
    if value and _QUANTITY.fullmatch(value) is None:
        raise ConfigError(
            f"[deploy] {key} must be a Kubernetes quantity such as \"250m\", \"2\", \"512Mi\" or \"1Gi\" "
            f"(or \"\" to leave it out); got {value!r}."
        )
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
    """Either a declarative spec (``class`` + ``params``) or a ``factory`` = ``module:function``.

    ``trusted_types`` names the classes, beyond those mlci's own training writes, that the fitted
    estimator may contain when it is loaded back from the workspace (see mlci.model.trust).
    """

    class_path: str | None
    params: Mapping[str, Any]
    scale: bool
    factory: str | None
    trusted_types: tuple[str, ...] = ()


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
    outlier_quantile: float = 0.01  # share of training rows the outlier threshold flags


@dataclass(frozen=True)
class GateConfig:
    """The release policy: absolute thresholds, comparison with production, budgets."""

    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    non_inferiority: Mapping[str, float] = field(default_factory=dict)
    require_better: tuple[str, ...] = ()
    alpha: float = 0.05
    bootstrap: int = 1000
    seed: int = 0
    max_latency_p99_ms: float | None = None
    max_model_bytes: int | None = None
    require_smoke: bool = True
    baseline: str = "trivial"  # the candidate must beat the majority class / mean predictor; "none" opts out
    min_compared_rows: int = 50  # fewest rows neither model trained on that a comparison with production accepts


@dataclass(frozen=True)
class SmokeConfig:
    """The smoke test against a real server."""

    rows: int = 32
    max_p99_ms: float = 250.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class RegistryConfig:
    """Where artifacts are pushed: an OCI image layout on disk (default) or a registry server."""

    url: str
    repository: str
    insecure: bool = False


@dataclass(frozen=True)
class DeployConfig:
    """How environments are served."""

    target: str = "local"
    continuous_deployment: bool = False
    host: str = "127.0.0.1"
    staging_port: int = 8601
    production_port: int = 8600
    check_timeout_s: float = 30.0
    image: str = "ghcr.io/example/mlci-serving:latest"
    namespace: str = "default"
    replicas: int = 2
    kind: str = "deployment"
    cluster_registry: str = ""  # the registry URL as the cluster reaches it (default: [registry] url)
    rollout_timeout_s: float = 300.0
    prediction_log_claim: str = ""  # a PersistentVolumeClaim for the prediction log (default: an emptyDir)
    cpu_request: str = "250m"  # Kubernetes quantities; "" leaves one out
    memory_request: str = "512Mi"
    cpu_limit: str = ""
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class ReproducibilityConfig:
    """How the floating-point bits are made: "portable" (the same on any x86-64-v2 CPU and core count) or
    "native" (fastest, machine-bound; the manifest says so). See mlci.numerics."""

    numerics: str = "portable"


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
    gate: GateConfig = field(default_factory=GateConfig)
    smoke: SmokeConfig = field(default_factory=SmokeConfig)
    registry: RegistryConfig | None = None
    deploy: DeployConfig = field(default_factory=DeployConfig)
    reproducibility: ReproducibilityConfig = field(default_factory=ReproducibilityConfig)

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


def _check_workspace(path: Path, root: Path, where: str) -> None:
    """Refuse a workspace mlci would clobber: it deletes and replaces directories inside it (stage cache
    entries on --no-cache), so it must be a directory of its own, below nothing it must not touch."""
    resolved = path.expanduser().resolve()
    why = None
    if resolved == Path(resolved.anchor):
        why = "is the filesystem root"
    elif resolved == root.resolve():
        why = "is the repository itself (the directory of mlci.toml)"
    elif resolved in root.resolve().parents:
        why = "holds the repository (it is a parent of the directory of mlci.toml)"
    elif resolved.exists() and not resolved.is_dir():
        why = "is a file"
    if why is not None:
        raise ConfigError(
            f"{where} '{path}' {why}; mlci replaces directories inside its workspace, so it needs one of its "
            "own. Use the default '.mlci' or another new directory (set [workspace] path or pass --workspace)."
        )


def _check_drop(data: DataConfig) -> None:
    """``[data] drop`` wins over ``[data.features]`` (`mlci init` lists every column there, so a column the
    user drops is usually in both): refuse only a drop that leaves no feature or names the target."""
    if data.target in data.drop:
        raise ConfigError(
            f"[data] drop lists the target {data.target!r}; the target is never a feature, so remove it from drop "
            "(to train on another column, change [data] target)."
        )
    if data.features and all(name in data.drop for name in data.features):
        raise ConfigError(
            f"[data] drop removes every column listed in [data.features] ({', '.join(data.features)}), so no "
            "features are left. Remove a feature from drop, or list more columns in [data.features]."
        )


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
    _check_drop(data_cfg)

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
    trusted = _get(est, "estimator", "trusted_types", list, [])
    if not all(isinstance(t, str) for t in trusted):
        raise ConfigError(
            f"[estimator] trusted_types must be a list of class paths such as \"my_models.Clip\"; got {trusted!r}."
        )
    est_cfg = EstimatorConfig(
        class_path=class_path, params=dict(params), scale=_get(est, "estimator", "scale", bool, True), factory=factory,
        trusted_types=tuple(trusted),
    )

    exp = _section(raw, "export")
    export_cfg = ExportConfig(
        target_opset=_get(exp, "export", "target_opset", int, ExportConfig.target_opset),
        abs_tolerance=float(_get(exp, "export", "abs_tolerance", (float, int), ExportConfig.abs_tolerance)),
        rel_tolerance=float(_get(exp, "export", "rel_tolerance", (float, int), ExportConfig.rel_tolerance)),
    )
    if not 9 <= export_cfg.target_opset <= 21:
        raise ConfigError(f"[export] target_opset must be between 9 and 21; got {export_cfg.target_opset}.")
    for key in ("abs_tolerance", "rel_tolerance"):
        if getattr(export_cfg, key) < 0:
            raise ConfigError(f"[export] {key} must be >= 0; got {getattr(export_cfg, key)}.")

    ev = _section(raw, "evaluate")
    eval_cfg = EvaluateConfig(
        latency_runs=_get(ev, "evaluate", "latency_runs", int, EvaluateConfig.latency_runs),
        profile_bins=_get(ev, "evaluate", "profile_bins", int, EvaluateConfig.profile_bins),
        outlier_estimators=_get(ev, "evaluate", "outlier_estimators", int, EvaluateConfig.outlier_estimators),
        outlier_quantile=float(
            _get(ev, "evaluate", "outlier_quantile", (float, int), EvaluateConfig.outlier_quantile)
        ),
    )
    for key, low in (("latency_runs", 10), ("profile_bins", 2), ("outlier_estimators", 1)):
        if getattr(eval_cfg, key) < low:
            raise ConfigError(f"[evaluate] {key} must be >= {low}; got {getattr(eval_cfg, key)}.")
    if not 0 < eval_cfg.outlier_quantile < 0.5:
        raise ConfigError(
            "[evaluate] outlier_quantile is the share of training rows the outlier threshold flags and must "
            f"be strictly between 0 and 0.5 (default {EvaluateConfig.outlier_quantile}); got {eval_cfg.outlier_quantile}."
        )

    ws = _section(raw, "workspace")
    ws_path = Path(workspace) if workspace is not None else root / _get(ws, "workspace", "path", str, ".mlci")
    _check_workspace(ws_path, root, "--workspace" if workspace is not None else "[workspace] path")

    gate_cfg = _parse_gate(_section(raw, "gate"), task)
    sm = _section(raw, "smoke")
    smoke_cfg = SmokeConfig(
        rows=_get(sm, "smoke", "rows", int, SmokeConfig.rows),
        max_p99_ms=float(_get(sm, "smoke", "max_p99_ms", (float, int), SmokeConfig.max_p99_ms)),
        timeout_s=float(_get(sm, "smoke", "timeout_s", (float, int), SmokeConfig.timeout_s)),
    )
    if smoke_cfg.rows < 1 or smoke_cfg.max_p99_ms <= 0 or smoke_cfg.timeout_s <= 0:
        raise ConfigError(f"[smoke] rows, max_p99_ms and timeout_s must be positive; got {smoke_cfg}.")
    reg = _section(raw, "registry")
    registry_cfg = RegistryConfig(
        url=_get(reg, "registry", "url", str, f"oci-layout:{ws_path / 'registry'}"),
        repository=_get(reg, "registry", "repository", str, name),
        insecure=_get(reg, "registry", "insecure", bool, False),
    )
    dep = _section(raw, "deploy")
    deploy_cfg = DeployConfig(
        target=_get(dep, "deploy", "target", str, DeployConfig.target),
        continuous_deployment=_get(dep, "deploy", "continuous_deployment", bool, DeployConfig.continuous_deployment),
        host=_get(dep, "deploy", "host", str, DeployConfig.host),
        staging_port=_get(dep, "deploy", "staging_port", int, DeployConfig.staging_port),
        production_port=_get(dep, "deploy", "production_port", int, DeployConfig.production_port),
        check_timeout_s=float(_get(dep, "deploy", "check_timeout_s", (float, int), DeployConfig.check_timeout_s)),
        image=_get(dep, "deploy", "image", str, DeployConfig.image),
        namespace=_get(dep, "deploy", "namespace", str, DeployConfig.namespace),
        replicas=_get(dep, "deploy", "replicas", int, DeployConfig.replicas),
        kind=_get(dep, "deploy", "kind", str, DeployConfig.kind),
        cluster_registry=_get(dep, "deploy", "cluster_registry", str, DeployConfig.cluster_registry),
        rollout_timeout_s=float(_get(dep, "deploy", "rollout_timeout_s", (float, int), DeployConfig.rollout_timeout_s)),
        prediction_log_claim=_get(dep, "deploy", "prediction_log_claim", str, DeployConfig.prediction_log_claim),
        **{k: _quantity(dep, k) for k in ("cpu_request", "memory_request", "cpu_limit", "memory_limit")},
    )
    if deploy_cfg.rollout_timeout_s <= 0:
        raise ConfigError(f"[deploy] rollout_timeout_s must be a positive number of seconds; got {deploy_cfg.rollout_timeout_s}.")
    if deploy_cfg.target not in DEPLOY_TARGETS:
        raise ConfigError(f"[deploy] target must be one of {', '.join(DEPLOY_TARGETS)}; got {deploy_cfg.target!r}.")
    if deploy_cfg.kind not in ("deployment", "inferenceservice"):
        raise ConfigError(f"[deploy] kind must be 'deployment' or 'inferenceservice'; got {deploy_cfg.kind!r}.")
    for key in ("staging_port", "production_port"):
        if not 0 < getattr(deploy_cfg, key) < 65536:
            raise ConfigError(f"[deploy] {key} must be a TCP port (1-65535); got {getattr(deploy_cfg, key)}.")

    rep = _section(raw, "reproducibility")
    numerics = _get(rep, "reproducibility", "numerics", str, ReproducibilityConfig.numerics)
    if numerics not in NUMERICS_MODES:
        raise ConfigError(
            f'[reproducibility] numerics must be "portable" (the same bits on any x86-64-v2 CPU, the default) or '
            f'"native" (fastest, bound to this machine\'s CPU and core count); got {numerics!r}.'
        )

    return Config(
        reproducibility=ReproducibilityConfig(numerics=numerics),
        gate=gate_cfg,
        smoke=smoke_cfg,
        registry=registry_cfg,
        deploy=deploy_cfg,
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


def _metric_table(table: Mapping[str, Any], key: str, task: str) -> dict[str, float]:
    value = _get(table, "gate", key, dict, {})
    allowed = (*TASK_METRICS[task], "model_size_bytes") if key in ("min", "max") else TASK_METRICS[task]
    out = {}
    for metric, threshold in value.items():
        if metric not in allowed:
            hint = difflib.get_close_matches(metric, allowed, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"[gate.{key}] {metric!r} is not a {task} metric.{did_you_mean} Allowed: {', '.join(allowed)}."
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"[gate.{key}] {metric} must be a number; got {threshold!r}.")
        out[metric] = float(threshold)
    return out


def _parse_gate(table: Mapping[str, Any], task: str) -> GateConfig:
    default_margin = {"accuracy": 0.01} if task == "classification" else {"r2": 0.01}
    margins = _metric_table(table, "non_inferiority", task) if "non_inferiority" in table else default_margin
    if any(m < 0 for m in margins.values()):
        raise ConfigError(f"[gate.non_inferiority] margins must be >= 0; got {margins}.")
    better = _get(table, "gate", "require_better", list, [])
    for metric in better:
        if metric not in TASK_METRICS[task]:
            raise ConfigError(
                f"[gate] require_better names {metric!r}, not a {task} metric. Allowed: {', '.join(TASK_METRICS[task])}."
            )
    alpha = float(_get(table, "gate", "alpha", (float, int), 0.05))
    if not 0 < alpha < 0.5:
        raise ConfigError(f"[gate] alpha must be between 0 and 0.5; got {alpha}.")
    samples = _get(table, "gate", "bootstrap", int, 1000)
    if samples < 100:
        raise ConfigError(f"[gate] bootstrap must be >= 100 resamples; got {samples}.")
    latency = _get(table, "gate", "max_latency_p99_ms", (float, int), None)
    size = _get(table, "gate", "max_model_bytes", int, None)
    baseline = _get(table, "gate", "baseline", str, "trivial")
    if baseline not in GATE_BASELINES:
        raise ConfigError(
            f'[gate] baseline must be "trivial" (the candidate must beat the majority class, or the mean for '
            f'regression, with confidence) or "none" (no baseline check); got {baseline!r}.'
        )
    min_rows = _get(table, "gate", "min_compared_rows", int, 50)
    if min_rows < 1:
        raise ConfigError(f"[gate] min_compared_rows must be >= 1 row; got {min_rows}.")
    return GateConfig(
        min=_metric_table(table, "min", task),
        max=_metric_table(table, "max", task),
        non_inferiority=margins,
        require_better=tuple(better),
        alpha=alpha,
        bootstrap=samples,
        seed=_get(table, "gate", "seed", int, 0),
        max_latency_p99_ms=float(latency) if latency is not None else None,
        max_model_bytes=size,
        require_smoke=_get(table, "gate", "require_smoke", bool, True),
        baseline=baseline,
        min_compared_rows=min_rows,
    )
