"""What mlci lets skops load from estimator.skops: the types its own training writes, as it writes them.

estimator.skops is read back from the workspace, where anything may have replaced it (a poisoned CI
cache, a crafted directory given to `mlci export --train`). skops restores each node of the file by
calling the type the node names (a ConstructorFromReduceNode calls it with arguments taken from the
file), so trusting a name means trusting it to be called with arguments an attacker chose. mlci
therefore trusts exact (skops loader, type) pairs, never name prefixes and never functions:

- TRAINED_TYPES: what mlci's own training writes for every estimator it supports, with its
  preprocessing (derived, not guessed: tests/test_estimator_trust.py re-derives it and checks that every
  name is a class);
- the class `[estimator] class` names, and the classes `[estimator] trusted_types` lists, as plain
  objects (ObjectNode: created without calling them, then given their attributes).

Only mlci.toml and the code it names decide; nothing in the workspace (train.json included) does.
"""

from __future__ import annotations

import inspect
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import ConfigError, DataError

__all__ = ["TRAINED_TYPES", "describe", "estimator_types", "load_estimator", "refused_types", "trusted_types"]

# The loader skops uses for an instance restored from its attributes, without calling its class.
_OBJECT = "ObjectNode"

_TRAINED: dict[str, tuple[str, ...]] = {
    "DTypeNode": ("numpy.dtype",),
    "DictNode": ("builtins.dict",),
    "JsonNode": ("builtins.str",),
    "ListNode": ("builtins.list",),
    "LossNode": (
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss._loss.CyHalfSquaredError",
        "sklearn.linear_model._sgd_fast.Hinge",
    ),
    "NdArrayNode": ("numpy.float64", "numpy.int64", "numpy.ndarray"),
    _OBJECT: (
        "skl2onnx.sklapi.cast_transformer.CastTransformer",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.dummy.DummyClassifier",
        "sklearn.dummy.DummyRegressor",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.ExtraTreesRegressor",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.RandomForestRegressor",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._gb.GradientBoostingRegressor",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.linear_model._base.LinearRegression",
        "sklearn.linear_model._coordinate_descent.Lasso",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._ridge.Ridge",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        # the column selector mlci puts in front of a factory's model ("passthrough" once fitted)
        "sklearn.preprocessing._function_transformer.FunctionTransformer",
        "sklearn.svm._classes.SVC",
        "sklearn.svm._classes.SVR",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._classes.ExtraTreeRegressor",
    ),
    "RandomStateNode": ("numpy.random.mtrand.RandomState",),
    "SliceNode": ("builtins.slice",),
    "TreeNode": ("sklearn.tree._tree.Tree",),
    "TupleNode": ("builtins.tuple",),
    "TypeNode": ("builtins.str", "numpy.float32", "numpy.float64"),
}
TRAINED_TYPES: frozenset[tuple[str, str]] = frozenset((loader, name) for loader, names in _TRAINED.items() for name in names)


def estimator_types(data: bytes, source: str) -> set[tuple[str, str]]:
    """Every (loader, type) a skops file names, read from its schema.json alone: nothing is imported or built."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError) as exc:
        raise DataError(
            f"'{source}' is not a skops file written by `mlci train` ({type(exc).__name__}: {exc}). Re-run `mlci train`."
        ) from exc
    found: set[tuple[str, str]] = set()
    stack: list[Any] = [schema]
    while stack:  # every node skops builds is a JSON object with a __loader__, however deep it sits
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                found.add((str(item["__loader__"]), f"{item.get('__module__')}.{item.get('__class__')}"))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _own_class(name: str, root: Path) -> str:
    """``name`` checked to be a class, imported by its own module and name (so an alias cannot pass for it)."""
    from mlci.model.estimators import import_project_module

    module_name, _, attr = name.rpartition(".")
    where = f"[estimator] trusted_types: {name!r}"
    if not module_name or not attr:
        raise ConfigError(f"{where} is not a full import path such as 'my_models.Clip'; name the class with its module.")
    try:
        module = import_project_module(module_name, root)
    except ImportError as exc:
        raise ConfigError(f"{where}: module {module_name!r} cannot be imported ({exc}). It is looked up next to mlci.toml ({root}).") from exc
    obj = getattr(module, attr, None)
    if not inspect.isclass(obj):
        raise ConfigError(
            f"{where} is not a class (it is {type(obj).__name__}). Only classes can be trusted: skops calls what "
            "it trusts while loading, with arguments from the file, so a function is never trusted. Remove it."
        )
    own = f"{obj.__module__}.{obj.__name__}"
    if own != name:
        raise ConfigError(f"{where} is the class {own!r} under another name; list it as {own!r}.")
    return own


def trusted_types(config: Config) -> frozenset[tuple[str, str]]:
    """TRAINED_TYPES plus the classes mlci.toml names (`class`, `trusted_types`), as plain objects."""
    extra = {_own_class(name, config.root) for name in config.estimator.trusted_types}
    if config.estimator.class_path is not None:
        from mlci.model.estimators import import_class

        cls = import_class(config.estimator.class_path)
        extra.add(f"{cls.__module__}.{cls.__name__}")
    return TRAINED_TYPES | {(_OBJECT, name) for name in extra}


def refused_types(found: set[tuple[str, str]], trusted: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs of ``found`` outside ``trusted``, sorted by type name."""
    return sorted(found - trusted, key=lambda pair: (pair[1], pair[0]))


def describe(refused: list[tuple[str, str]]) -> str:
    """'builtins.exec (as ConstructorFromReduceNode), …' for messages."""
    return ", ".join(f"{name} (as {loader})" for loader, name in refused)


def _objects(root: Any) -> Iterator[Any]:
    """Every object reachable from a loaded estimator (all of trusted types, so looking inside runs nothing)."""
    import numpy as np

    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif not isinstance(obj, type) and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def _tree_problem(tree: Any, n_features: int | None) -> str | None:
    """Why scikit-learn must not walk ``tree`` (it indexes nodes and features without bounds checks), or None."""
    import numpy as np

    count = int(tree.node_count)
    if not 0 < count <= int(tree.capacity):
        return f"it claims {count} nodes but holds {int(tree.capacity)}"
    if n_features is not None and int(tree.n_features) != n_features:
        return f"it splits on {int(tree.n_features)} features but its estimator takes {n_features}"
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    ids = np.arange(count)
    leaf = left == -1
    internal = ~leaf
    # scikit-learn numbers a child after its parent: every child id lies in (parent id, node count).
    bad = (leaf & (right != -1)) | (internal & ((left <= ids) | (left >= count) | (right <= ids) | (right >= count)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"node {i} has a child outside the tree (left {int(left[i])}, right {int(right[i])}, of {count} nodes)"
    bad = internal & ((feature < 0) | (feature >= int(tree.n_features)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"node {i} splits on feature {int(feature[i])} of {int(tree.n_features)}"
    return None


def _check_trees(estimator: Any, source: str) -> None:
    import numpy as np
    from sklearn.tree._tree import Tree

    for obj in _objects(estimator):
        owned = getattr(obj, "tree_", None)
        if isinstance(obj, Tree):
            problem = _tree_problem(obj, None)
        elif isinstance(owned, Tree):
            n_features = getattr(obj, "n_features_in_", None)
            problem = _tree_problem(owned, int(n_features) if isinstance(n_features, (int, np.integer)) else None)
        else:
            continue
        if problem:
            raise DataError(
                f"'{source}' holds a decision tree that is not well formed: {problem}. scikit-learn walks "
                "trees without bounds checks, so mlci does not use it; the file was modified after "
                "`mlci train` wrote it. Re-run `mlci train` (or `mlci run --no-cache`)."
            )


def load_estimator(path: Path, config: Config) -> Any:
    """The fitted estimator in ``path``, loaded only when every node is a pair mlci trusts for ``config``."""
    import skops.io as sio

    data = path.read_bytes()
    found = estimator_types(data, str(path))
    refused = refused_types(found, trusted_types(config))
    if refused:
        raise DataError(
            f"'{path}' contains types mlci does not trust: {describe(refused)}. mlci loads only what its own "
            "training writes for this mlci.toml (plus the classes [estimator] trusted_types lists), so this "
            "file was not written by `mlci train` with this config, or was modified after. Nothing in it was "
            "run. Re-run `mlci train` (or `mlci run --no-cache`) to rebuild it."
        )
    # Every name is now one mlci trusts; skops' own audit then passes and it builds the objects.
    estimator = sio.loads(data, trusted=sorted({name for _loader, name in found}))
    _check_trees(estimator, str(path))
    return estimator
