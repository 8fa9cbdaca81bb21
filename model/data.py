"""Load a dataset, infer or check its feature schema, and split it the same way on every run."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlci.errors import DataError

__all__ = [
    "Dataset",
    "Feature",
    "LEGACY_SPLIT_SCHEME",
    "SPLIT_SCHEME",
    "Schema",
    "holdout_mask",
    "infer_kind",
    "legacy_holdout_mask",
    "load_dataset",
    "read_table",
    "split_mask",
    "typed_features",
    "typed_target",
]

SPLIT_SCHEME = "raw-row-v2"  # a row's side: sha256 of the seed and the row's raw cells, every column
LEGACY_SPLIT_SCHEME = "typed-row-v1"  # artifacts without a split scheme: pandas' hash of typed features + target


@dataclass(frozen=True)
class Feature:
    """One input column: its name and whether it is numeric (FP32 in ONNX) or categorical (BYTES)."""

    name: str
    kind: str  # "numeric" | "categorical"

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol datatype of this input."""
        return "FP32" if self.kind == "numeric" else "BYTES"


@dataclass(frozen=True)
class Schema:
    """Ordered features, the target, and (for classification) the class labels."""

    features: tuple[Feature, ...]
    target: str
    task: str

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form stored in the manifest."""
        return {
            "features": [{"name": f.name, "kind": f.kind, "datatype": f.datatype} for f in self.features],
            "target": self.target,
            "task": self.task,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schema:
        """Inverse of :meth:`to_json`."""
        return cls(
            features=tuple(Feature(f["name"], f["kind"]) for f in data["features"]),
            target=data["target"],
            task=data["task"],
        )

    @property
    def names(self) -> list[str]:
        """Feature names in input order."""
        return [f.name for f in self.features]


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (schema order, numeric as float64, categorical as str with '' for missing) and target ``y``.

    ``raw`` is the file as read, every column (dropped ones and the target too): the split hashes it, so
    a row's side does not depend on which columns are features or how they are typed.
    """

    X: pd.DataFrame
    y: pd.Series
    schema: Schema
    digest: str
    raw: pd.DataFrame


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; every failure says which file and what to do."""
    if not path.is_file():
        raise DataError(
            f"Data file '{path}' does not exist. Check [data] path in mlci.toml (relative paths start at "
            "the directory holding mlci.toml)."
        )
    if path.stat().st_size == 0:
        raise DataError(f"Data file '{path}' is empty (0 bytes); expected a header row and data rows.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise DataError(
                f"Reading '{path}' needs pyarrow, which is not installed. Install it with `pip install 'mlci[parquet]'`."
            ) from exc
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"'{path}' is not a readable Parquet file: {exc}.") from exc
    if suffix not in (".csv", ".txt", ".tsv"):
        raise DataError(f"Data file '{path}' has suffix {suffix!r}; expected .csv, .tsv or .parquet.")
    try:
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"Data file '{path}' has no columns; expected a header row and data rows.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is not a readable CSV file: {exc}.") from exc


_MISSING = {"", "na", "nan", "null", "none", "n/a"}


def _fp32(values: pd.Series) -> pd.Series:
    """Round to float32 and back: numeric features are FP32 in the served model (the schema says so), so
    training, parity and evaluation all see exactly the values a production request can carry."""
    return values.astype("float32").astype("float64")


def _as_numeric(col: pd.Series, name: str, path: Path) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):
        return _fp32(col)
    text = col.astype(str).str.strip()
    missing = text.str.lower().isin(_MISSING) | col.isna()
    values = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"Column {name!r} in '{path}' is numeric in the schema, but data row {row + 1} holds "
            f"{col.iloc[row]!r}, which is not a number ({int(bad.sum())} such rows). Fix the values, or "
            f'declare the column categorical: [data.features] {name} = "categorical".'
        )
    return _fp32(values)


def _as_categorical(col: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(col):
        # Parquet floats that are really integer codes would otherwise become '1.0'.
        col = col.astype("Int64") if (col.dropna() % 1 == 0).all() else col
    text = col.astype("string").fillna("").str.strip()
    text = text.mask(text.str.lower().isin(_MISSING), "")
    return text.astype(object)


def infer_kind(col: pd.Series) -> str:
    """numeric when every present value parses as a number, else categorical (what `mlci init` writes too)."""
    if pd.api.types.is_numeric_dtype(col):
        return "numeric"
    text = col.astype(str).str.strip()
    present = text[~text.str.lower().isin(_MISSING)]
    if len(present) and pd.to_numeric(present, errors="coerce").notna().all():
        return "numeric"
    return "categorical"


def _suggest(name: str, options: Sequence[str]) -> str:
    hint = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean {hint[0]!r}?" if hint else ""


def load_dataset(
    path: Path,
    target: str,
    task: str,
    features: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
    digest: str = "",
) -> Dataset:
    """Load ``path`` and validate it against the declared features (inferred when none are declared).

    The features are the declared columns (or, with none declared, every column but the target) minus
    the ``drop`` columns: a column in ``drop`` is never a feature, whether it is declared or not.
    """
    frame = read_table(path)
    if frame.shape[0] == 0:
        raise DataError(f"Data file '{path}' has a header but no data rows; expected at least one row.")
    columns = list(frame.columns)
    if target not in columns:
        raise DataError(
            f"Target column {target!r} is not in '{path}'.{_suggest(target, columns)} "
            f"Columns found: {', '.join(map(str, columns))}. Fix [data] target in mlci.toml."
        )
    declared = dict(features or {})
    for name in declared:
        if name not in columns:
            raise DataError(
                f"Feature {name!r} from [data.features] is not in '{path}'.{_suggest(name, columns)} "
                f"Columns found: {', '.join(map(str, columns))}."
            )
    for name in drop:
        if name not in columns:
            raise DataError(f"Column {name!r} in [data] drop is not in '{path}'.{_suggest(name, columns)}")
    # drop wins over [data.features]: `mlci init` lists every column there, and a dropped one stays out.
    names = [c for c in (declared or columns) if c != target and c not in drop]
    if not names:
        raise DataError(f"'{path}' has no feature columns besides the target {target!r}.")
    kinds = {n: declared.get(n) or infer_kind(frame[n]) for n in names}
    schema = Schema(tuple(Feature(str(n), kinds[n]) for n in names), target, task)

    X = typed_features(frame, schema, path)
    y = _target(frame[target], target, task, path)
    return Dataset(X=X, y=y, schema=schema, digest=digest, raw=frame)


def typed_features(frame: pd.DataFrame, schema: Schema, path: Path) -> pd.DataFrame:
    """The columns of ``frame`` that ``schema`` names, typed as it says (how a model with that schema sees them)."""
    return pd.DataFrame(
        {
            f.name: (_as_numeric(frame[f.name], f.name, path) if f.kind == "numeric" else _as_categorical(frame[f.name]))
            for f in schema.features
        }
    )


def typed_target(frame: pd.DataFrame, schema: Schema, path: Path) -> pd.Series:
    """The target column of ``frame`` as a model with ``schema`` was trained on it."""
    return _target(frame[schema.target], schema.target, schema.task, path)


def _target(col: pd.Series, name: str, task: str, path: Path) -> pd.Series:
    text = col.astype(str).str.strip() if not pd.api.types.is_numeric_dtype(col) else None
    missing = col.isna() if text is None else (text.str.lower().isin(_MISSING) | col.isna())
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(
            f"Target column {name!r} in '{path}' is empty in {int(missing.sum())} rows (first: data row {row + 1}). "
            "Every training row needs a target; drop or fill those rows."
        )
    numeric = pd.to_numeric(col if text is None else text, errors="coerce")
    if task == "regression":
        if numeric.isna().any():
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise DataError(
                f"Target column {name!r} must be numeric for regression, but data row {row + 1} holds "
                f"{col.iloc[row]!r}. Fix the value or set [model] task = \"classification\"."
            )
        return numeric.astype("float64").rename(name)
    if numeric.notna().all() and (numeric % 1 == 0).all():
        return numeric.astype("int64").rename(name)
    if numeric.notna().all():
        raise DataError(
            f"Target column {name!r} holds fractional numbers (e.g. {numeric[numeric % 1 != 0].iloc[0]!r}), "
            "which are not class labels. Set [model] task = \"regression\" or use integer/string labels."
        )
    return (col.astype(str).str.strip() if text is None else text).astype(object).rename(name)


def _cell_text(col: pd.Series) -> list[str]:
    """A column's cells as text that does not depend on how mlci types the column.

    CSV cells are already the file's text (read with ``dtype=str``); Parquet cells are typed by the file
    itself: missing is ``""``, floats are Python's shortest round-trip repr, the rest ``str``.
    """
    if pd.api.types.is_float_dtype(col):
        return ["" if v != v else repr(float(v)) for v in col.tolist()]
    return ["" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v) for v in col.tolist()]


def split_mask(raw: pd.DataFrame, fraction: float, seed: int, columns: Sequence[str] | None = None) -> np.ndarray:
    """True for holdout rows under SPLIT_SCHEME: a row's side depends only on its raw cells and the seed.

    Every column of the file counts (``columns``, sorted by name; by default all of them), whatever is a
    feature or how it is typed, so retyping, adding or removing a feature keeps every row on its side.
    Hashing rows (instead of shuffling positions) keeps every row on the same side when rows are appended
    or reordered, and puts duplicate rows on the same side, so they cannot leak across.
    """
    names = sorted(map(str, raw.columns if columns is None else columns))
    cells = [_cell_text(raw[name]) for name in names]
    prefix = f"{SPLIT_SCHEME}\x00{seed}\x00".encode()
    header = "\x1e".join(names)
    out = np.empty(len(raw), dtype=bool)
    limit = fraction * 2**64
    for i, row in enumerate(zip(*cells, strict=True)):
        text = header + "\x1d" + "\x1f".join(row)
        out[i] = int.from_bytes(hashlib.sha256(prefix + text.encode()).digest()[:8], "big") < limit
    return out


def holdout_mask(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """True for the holdout rows of ``dataset`` (SPLIT_SCHEME over its raw rows, see :func:`split_mask`)."""
    return split_mask(dataset.raw, fraction, seed)


def legacy_holdout_mask(X: pd.DataFrame, y: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """The split of artifacts built before SPLIT_SCHEME (LEGACY_SPLIT_SCHEME): pandas' hash of the typed
    features and target. Kept only to find the rows such a production model did not train on."""
    key = f"mlci-split-{seed:06d}"[-16:].rjust(16, "0")
    hashed = pd.util.hash_pandas_object(pd.concat([X, y], axis=1), index=False, hash_key=key)
    unit = hashed.to_numpy(dtype=np.uint64) / float(2**64)
    return np.asarray(unit < fraction)
