"""Train stage: validate the data, split it the same way every run, fit the estimator.

The fitted estimator crosses to the export stage as a skops file and goes no further: the artifact, the
registry and serving only ever see ONNX. skops runs no code of the file's choosing only when the types it
may load are exact and not callable; mlci.model.trust says which, from mlci.toml alone.
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
from mlci.model.data import SPLIT_SCHEME, Dataset, Schema, holdout_mask, load_dataset
from mlci.model.estimators import build_estimator, estimator_name
from mlci.model.trust import describe, estimator_types, load_estimator, refused_types, trusted_types

__all__ = ["TrainResult", "load_data", "load_split", "load_trained", "load_trained_summary", "run_train", "split_dataset"]

ESTIMATOR_FILE = "estimator.skops"
SPLIT_FILE = "split.json"
TRAIN_FILE = "train.json"


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
    mask = holdout_mask(dataset, config.holdout, config.seed)
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


def _check_loadable(data: bytes, estimator: Any, schema: Schema, config: Config, trusted: frozenset[tuple[str, str]]) -> None:
    """Refuse, at train time, a fitted estimator that export would refuse to load, saying what to do."""
    refused = refused_types(estimator_types(data, ESTIMATOR_FILE), trusted)
    if not refused:
        return
    from mlci.model.export import convert

    # An estimator skl2onnx cannot convert is a dead end whatever is trusted: say that instead.
    convert(estimator, schema, config.name, config.export.target_opset, optimise=False)
    listable = [name for loader, name in refused if loader == "ObjectNode"]
    if len(listable) == len(refused):
        names = ", ".join(f'"{n}"' for n in [*config.estimator.trusted_types, *listable])
        raise ConfigError(
            f"The fitted {estimator_name(estimator)} contains classes mlci does not load by default: "
            f"{', '.join(listable)}. estimator.skops is read back from the workspace, so mlci loads only "
            "the types its own training writes and the classes mlci.toml names. If this code is yours or "
            f"you trust it, add to [estimator] in mlci.toml: trusted_types = [{names}]"
        )
    raise ConfigError(
        f"The fitted {estimator_name(estimator)} contains values mlci cannot load safely: {describe(refused)}. "
        "Only classes stored as plain objects can be added to [estimator] trusted_types. Choose an estimator "
        "from mlci's supported list (see the README) or keep such values out of the fitted model."
    )


def run_train(config: Config, out_dir: Path) -> TrainResult:
    """Load, validate, split and fit; write the fitted estimator, the split and a summary to ``out_dir``."""
    trusted = trusted_types(config)  # a bad [estimator] trusted_types fails before any work
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

    data = sio.dumps(estimator)
    _check_loadable(data, estimator, dataset.schema, config, trusted)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ESTIMATOR_FILE).write_bytes(data)
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
            "scheme": SPLIT_SCHEME,
            "columns": sorted(map(str, dataset.raw.columns)),
            "holdout_rows": np.flatnonzero(mask).tolist(),
        },
    )
    write_json(
        out_dir / TRAIN_FILE,
        {
            "schema": dataset.schema.to_json(),
            "classes": classes,
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


def load_trained(train_dir: Path, config: Config) -> tuple[Any, dict[str, Any], Schema]:
    """The fitted estimator (only the types ``config`` trusts, see mlci.model.trust), the summary and the schema."""
    path = train_dir / ESTIMATOR_FILE
    if not path.is_file():
        raise DataError(f"'{train_dir}' holds no {ESTIMATOR_FILE}; expected the output of `mlci train`.")
    summary, schema = load_trained_summary(train_dir)
    return load_estimator(path, config), summary, schema
