"""Train stage: validate the data, split it the same way every run, fit the estimator.

The fitted estimator crosses to the export stage as a skops file (a format that loads without running
code, unlike pickle) and goes no further: the artifact, the registry and serving only ever see ONNX.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio

from mlci.canonical import sha256_file, write_json
from mlci.config import Config
from mlci.errors import ConfigError, DataError
from mlci.model.data import Dataset, Schema, holdout_mask, load_dataset
from mlci.model.estimators import build_estimator, estimator_name

__all__ = ["TrainResult", "load_data", "load_split", "load_trained", "load_trained_summary", "run_train", "split_dataset"]

ESTIMATOR_FILE = "estimator.skops"
SPLIT_FILE = "split.json"
TRAIN_FILE = "train.json"
# Modules whose types the export stage accepts inside estimator.skops without asking.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.", "pandas.", "skl2onnx.sklapi.")


@dataclass(frozen=True)
class TrainResult:
    """What the train stage wrote."""

    out_dir: Path
    estimator: str
    train_rows: int
    holdout_rows: int


def load_data(config: Config) -> Dataset:
    """The configured dataset, validated, with its file digest."""
    path = config.data.path
    digest = sha256_file(path) if path.is_file() else ""
    return load_dataset(path, config.data.target, config.task, config.data.features, config.data.drop, digest)


def _check_classes(y: pd.Series, mask: np.ndarray) -> None:
    train_counts = y[~mask].value_counts()
    hold_counts = y[mask].value_counts()
    for label in sorted(set(train_counts.index) | set(hold_counts.index), key=str):
        n_train, n_hold = int(train_counts.get(label, 0)), int(hold_counts.get(label, 0))
        if n_train == 0 or n_hold == 0:
            raise DataError(
                f"Class {label!r} has {n_train} rows in the training split and {n_hold} in the holdout; every "
                "class needs rows in both to be learned and measured. Add rows of that class, remove them, "
                "or change [split] holdout / seed."
            )


def split_dataset(dataset: Dataset, config: Config) -> np.ndarray:
    """The holdout mask, checked: both sides non-empty, every class on both sides."""
    mask = holdout_mask(dataset.X, dataset.y, config.holdout, config.seed)
    n_hold = int(mask.sum())
    if n_hold == 0 or n_hold == len(mask):
        raise DataError(
            f"The split put {n_hold} of {len(mask)} rows in the holdout ([split] holdout = {config.holdout}); "
            "both sides need rows. Use more data or a holdout fraction nearer 0.2."
        )
    if config.task == "classification":
        _check_classes(dataset.y, mask)
    return mask


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def run_train(config: Config, out_dir: Path) -> TrainResult:
    """Load, validate, split and fit; write the fitted estimator, the split and a summary to ``out_dir``."""
    dataset = load_data(config)
    mask = split_dataset(dataset, config)
    estimator = build_estimator(config.estimator, dataset.schema, config.seed, config.root)
    X_train, y_train = dataset.X[~mask], dataset.y[~mask]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            estimator.fit(X_train, y_train)
    except ValueError as exc:  # sklearn's InvalidParameterError is a ValueError
        raise ConfigError(f"Fitting {estimator_name(estimator)} failed: {exc}") from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    sio.dump(estimator, out_dir / ESTIMATOR_FILE)
    final = estimator
    while hasattr(final, "steps"):
        final = final.steps[-1][1]
    classes = [_jsonable(c.item() if hasattr(c, "item") else c) for c in getattr(estimator, "classes_", [])]
    write_json(
        out_dir / SPLIT_FILE,
        {
            "data_sha256": dataset.digest,
            "rows": len(mask),
            "holdout_fraction": config.holdout,
            "seed": config.seed,
            "holdout_rows": np.flatnonzero(mask).tolist(),
        },
    )
    write_json(
        out_dir / TRAIN_FILE,
        {
            "schema": dataset.schema.to_json(),
            "classes": classes,
            "factory_module": (config.estimator.factory or "").partition(":")[0] or None,
            "estimator": {
                "class": f"{type(final).__module__}.{type(final).__qualname__}",
                "name": estimator_name(estimator),
                "params": _jsonable(final.get_params(deep=False)),
                "steps": [name for name, _ in estimator.steps] if hasattr(estimator, "steps") else [],
            },
        },
    )
    return TrainResult(out_dir, estimator_name(estimator), int((~mask).sum()), int(mask.sum()))


def load_split(train_dir: Path, dataset: Dataset) -> np.ndarray:
    """The holdout mask written by :func:`run_train`, refused if the data file changed since."""
    split = json.loads((train_dir / SPLIT_FILE).read_text())
    if split["data_sha256"] != dataset.digest:
        raise DataError(
            f"The data file changed since training (sha256 {split['data_sha256'][:12]}… then, "
            f"{dataset.digest[:12]}… now). Re-run `mlci train` before this stage."
        )
    mask = np.zeros(split["rows"], dtype=bool)
    mask[split["holdout_rows"]] = True
    return mask


def load_trained_summary(train_dir: Path) -> tuple[dict[str, Any], Schema]:
    """The train summary and schema, without loading the estimator."""
    path = train_dir / TRAIN_FILE
    if not path.is_file():
        raise DataError(f"'{train_dir}' holds no {TRAIN_FILE}; expected the output of `mlci train`.")
    summary = json.loads(path.read_text())
    return summary, Schema.from_json(summary["schema"])


def load_trained(train_dir: Path) -> tuple[Any, dict[str, Any], Schema]:
    """The fitted estimator (skops, trusted types only), the train summary and the schema."""
    path = train_dir / ESTIMATOR_FILE
    if not path.is_file():
        raise DataError(f"'{train_dir}' holds no {ESTIMATOR_FILE}; expected the output of `mlci train`.")
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    summary, schema = load_trained_summary(train_dir)
    factory_module = summary.get("factory_module")
    if factory_module:
        refused = [t for t in refused if not t.startswith(factory_module + ".")]
    if refused:
        raise DataError(
            f"'{path}' contains types outside scikit-learn/numpy/scipy: {', '.join(refused)}. "
            "mlci loads only trusted types; re-train with a supported estimator."
        )
    estimator = sio.load(path, trusted=untrusted)
    return estimator, summary, schema
