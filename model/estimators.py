"""Build the unfitted estimator named by `[estimator]`: a declarative spec or a `module:function`."""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlci.config import EstimatorConfig
from mlci.errors import ConfigError
from mlci.model.data import Schema

__all__ = [
    "Step",
    "build_estimator",
    "estimator_name",
    "float32_cast",
    "import_class",
    "import_project_module",
    "is_tree_model",
    "preprocessor",
    "steps",
]

# Suggestions for a mistyped class path: estimators skl2onnx converts and people reach for first.
KNOWN_ESTIMATORS = (
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.Lasso",
    "sklearn.linear_model.SGDClassifier",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.RandomForestRegressor",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.ensemble.GradientBoostingRegressor",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.ExtraTreesRegressor",
    "sklearn.tree.DecisionTreeClassifier",
    "sklearn.tree.DecisionTreeRegressor",
    "sklearn.neighbors.KNeighborsClassifier",
    "sklearn.svm.SVC",
    "sklearn.svm.SVR",
)


def import_class(path: str) -> type:
    """The scikit-learn estimator class ``[estimator] class`` names; a ConfigError with a suggestion otherwise."""
    module_name, _, attr = path.rpartition(".")
    hint = difflib.get_close_matches(path, KNOWN_ESTIMATORS, n=1, cutoff=0.6)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    if not module_name:
        raise ConfigError(
            f"[estimator] class must be a full import path such as 'sklearn.linear_model.LogisticRegression'; "
            f"got {path!r}.{did_you_mean}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"[estimator] class {path!r}: module {module_name!r} cannot be imported ({exc}).{did_you_mean}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        local = difflib.get_close_matches(attr, public, n=1)
        did_you_mean = f" Did you mean '{module_name}.{local[0]}'?" if local else did_you_mean
        raise ConfigError(f"[estimator] class {path!r}: {module_name} has no {attr!r}.{did_you_mean}")
    if not (inspect.isclass(cls) and issubclass(cls, BaseEstimator)):
        raise ConfigError(f"[estimator] class {path!r} is not a scikit-learn estimator class.")
    return cls


def _check_params(cls: type, params: Mapping[str, Any]) -> None:
    accepted = sorted(cls().get_params(deep=False))
    for key in params:
        if key not in accepted:
            hint = difflib.get_close_matches(key, accepted, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{cls.__name__} does not accept the parameter {key!r} from [estimator] params.{did_you_mean} "
                f"Accepted parameters: {', '.join(accepted)}."
            )


def preprocessor(schema: Schema, scale: bool) -> ColumnTransformer:
    """Impute (+ scale) numeric columns, impute + one-hot categorical ones, selected by name."""
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    steps: list[tuple[str, Any, list[str]]] = []
    if numeric:
        num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if scale:
            num_steps.append(("scale", StandardScaler()))
        steps.append(("numeric", Pipeline(num_steps), numeric))
    if categorical:
        # Missing categories arrive as '' (see data.py): the string imputer is what skl2onnx converts.
        cat = Pipeline(
            [
                ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value="(missing)")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]
        )
        steps.append(("categorical", cat, categorical))
    return ColumnTransformer(steps, sparse_threshold=0.0)


def import_project_module(module_name: str, root: Path) -> ModuleType:
    """Import ``module_name`` from the model repository (next to mlci.toml) first, then from sys.path.

    Raises ImportError like importlib does.
    """
    root_str = str(root)
    if root_str not in sys.path:
        sys.path.insert(0, root_str)
    local = root / (module_name.replace(".", "/") + ".py")
    if local.is_file():
        # Import the model repository's own file as it is now: a long-lived process (tests, a notebook)
        # must not keep a same-named module from another repository or an older edit of this one.
        sys.path.remove(root_str)
        sys.path.insert(0, root_str)
        sys.modules.pop(module_name, None)
        importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _load_factory(spec: str, root: Path) -> Any:
    module_name, _, func_name = spec.partition(":")
    try:
        module = import_project_module(module_name, root)
    except ImportError as exc:
        raise ConfigError(
            f"[estimator] factory {spec!r}: module {module_name!r} cannot be imported ({exc}). "
            f"It is looked up next to mlci.toml ({root}) and on sys.path."
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"[estimator] factory {spec!r}: {module_name} has no callable {func_name!r}.")
    return func


def _with_named_inputs(estimator: Any, schema: Schema, factory: str) -> Any:
    """Serving takes one tensor per feature; a model that does not select columns by name gets a selector."""
    first = estimator.steps[0][1] if isinstance(estimator, Pipeline) else estimator
    if isinstance(first, ColumnTransformer):
        return estimator
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    if categorical:
        raise ConfigError(
            f"[estimator] factory {factory!r} returned a model that does not start with a ColumnTransformer, "
            f"but the data has categorical features ({', '.join(categorical)}). Start the pipeline with a "
            "ColumnTransformer that selects columns by name and encodes the categorical ones."
        )
    select = ColumnTransformer([("numeric", "passthrough", schema.names)], sparse_threshold=0.0)
    return Pipeline([("select", select), ("model", estimator)])


def build_estimator(spec: EstimatorConfig, schema: Schema, seed: int, root: Path) -> Any:
    """The unfitted estimator for ``spec``: preprocessing + model for a class, or whatever the factory returns."""
    if spec.factory is not None:
        factory = _load_factory(spec.factory, root)
        try:
            required = [
                p.name
                for p in inspect.signature(factory).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        except (TypeError, ValueError):  # no signature to read (some builtins): calling it will tell
            required = []
        if required:
            raise ConfigError(
                f"[estimator] factory {spec.factory!r} needs argument(s) {', '.join(required)}, but mlci calls it "
                "with none. Name a function that takes no arguments and returns an unfitted estimator."
            )
        estimator = factory()
        if not hasattr(estimator, "fit"):
            raise ConfigError(
                f"[estimator] factory {spec.factory!r} returned {type(estimator).__name__}, not an unfitted estimator with fit()."
            )
        estimator = _with_named_inputs(estimator, schema, spec.factory)
    else:
        cls = import_class(spec.class_path or "")
        _check_params(cls, spec.params)
        params = dict(spec.params)
        # A seeded run is a reproducible run: fill random_state from [split] seed unless given.
        if "random_state" in cls().get_params(deep=False) and "random_state" not in params:
            params["random_state"] = seed
        try:
            final = cls(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{cls.__name__}({params}) cannot be constructed: {exc}") from exc
        steps: list[tuple[str, Any]] = [("preprocess", preprocessor(schema, spec.scale))]
        if is_tree_model(final):
            steps.append(("float32", float32_cast()))
        estimator = Pipeline([*steps, ("estimator", final)])
    wanted = is_classifier if schema.task == "classification" else is_regressor
    if not wanted(estimator):
        raise ConfigError(
            f"[model] task is {schema.task!r}, but {estimator_name(estimator)} is not a "
            f"{'classifier' if schema.task == 'classification' else 'regressor'}. "
            "Pick a matching estimator or change the task."
        )
    return estimator


def is_tree_model(estimator: Any) -> bool:
    """Trees compare float32 features (scikit-learn casts before splitting); ONNX must see the same values."""
    module = type(estimator).__module__
    return module.startswith(("sklearn.ensemble", "sklearn.tree")) and "HistGradient" not in type(estimator).__name__


def float32_cast() -> Any:
    """The transformer that makes the float32 cast explicit, so skl2onnx puts it in the graph too."""
    import numpy as np
    from skl2onnx.sklapi import CastTransformer

    return CastTransformer(dtype=np.float32)


def estimator_name(estimator: Any) -> str:
    """The final step's class name (what users recognise), e.g. 'RandomForestClassifier'."""
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return type(estimator).__name__


@dataclass(frozen=True)
class Step:
    """One estimator inside a (nested) pipeline: its scikit-learn parameter path and the columns it sees."""

    path: str  # as set_params spells it, e.g. 'pre__cat__impute'; '' for the estimator itself
    estimator: Any
    columns: tuple[str, ...] | None  # the enclosing ColumnTransformer branch's columns, when named


def steps(estimator: Any, path: str = "", columns: tuple[str, ...] | None = None) -> Iterator[Step]:
    """Every estimator in ``estimator``, itself first, through Pipelines, ColumnTransformers and unions."""
    yield Step(path, estimator, columns)
    prefix = f"{path}__" if path else ""
    if isinstance(estimator, Pipeline):
        for name, step in estimator.steps:
            yield from steps(step, prefix + name, columns)
    elif isinstance(estimator, ColumnTransformer):
        branches = getattr(estimator, "transformers_", estimator.transformers)
        for name, transformer, selected in branches:
            named = _column_names(selected)
            if not isinstance(transformer, str):  # 'drop' / 'passthrough' convert to nothing
                yield from steps(transformer, prefix + name, named if named is not None else columns)
    elif hasattr(estimator, "transformer_list"):  # FeatureUnion
        for name, transformer in estimator.transformer_list:
            if not isinstance(transformer, str):
                yield from steps(transformer, prefix + name, columns)


def _column_names(selected: Any) -> tuple[str, ...] | None:
    """A ColumnTransformer branch's columns when given by name (not by position, mask or callable)."""
    if isinstance(selected, str):
        return (selected,)
    if isinstance(selected, (list, tuple)) and all(isinstance(c, str) for c in selected):
        return tuple(selected)
    return None
