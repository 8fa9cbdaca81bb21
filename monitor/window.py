"""A window of logged traffic as columns: what the drift, outlier and performance checks read.

Prediction-log records (written by :mod:`mlci.serving.predlog`) come in two formats, and one log may
hold both (a server upgraded in place keeps appending to the same file):

- current: the numeric features as one *packed array* under ``numeric`` (dtype, shape and the bytes:
  in base64, or for a large array in the log's blob file, read through the builder's
  :class:`~mlci.serving.predlog.BlobReader`; see :func:`~mlci.serving.predlog.unpack_array`): the float32 matrix the model saw,
  feature-major, of shape ``(n_numeric, rows)``: one row per numeric feature in schema order, one
  column per request row, NaN for a missing value (absent when the model has no numeric feature); the
  categorical features as lists of strings under ``inputs`` (``""`` missing); numeric outputs
  (probabilities, regression values, integer labels) packed with one entry per row first; class labels
  packed as indices with their ``classes`` (unpacked to the names), or as string lists::

      {"id": "...", "ts": 1767225600.1, "model": "name", "digest": "sha256:...", "rows": 2,
       "inputs": {"<categorical feature>": ["a", ""]},
       "outputs": {"label": {"classes": ["benign", "malignant"], "dtype": "|u1", "shape": [2], "b64": "..."},
                   "probabilities": {"dtype": "<f8", "shape": [2, 2], "b64": "..."}},
       "numeric": {"dtype": "<f4", "shape": [30, 2], "b64": "..."}}

  (a batch's large arrays: ``{"dtype": "<f4", "shape": [30, 1024], "blob": ["predictions-<...>.bin", 64]}``)

- older: no ``numeric``; every feature as a list under ``inputs`` (``null`` for a missing numeric
  value) and every output as a plain (nested) list.

Every current record also says ``"synthetic": true`` or ``false``: true for a request its client marked
as synthetic traffic (the smoke test, the post-deploy check). Those never enter a window, so no drift,
outlier or performance check sees them; the builder counts them. A record without the key comes from a
server older than the mark, where a check's rows cannot be told from real ones: it is taken in as
traffic (as it always was) and its rows are counted as *unmarked*, so the report can say so.

A window concatenates them, in log order, into one numpy column per feature (numeric: float64 with NaN
for a missing value; categorical: ``str`` with ``""`` for a missing one) and one array per output. A
packed matrix is decoded once and kept as a numpy block; it is never turned into Python lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlci.monitor.errors import MonitorError
from mlci.serving.predlog import BlobReader, unpack_array

__all__ = ["Window", "WindowBuilder", "build_window", "traffic_note"]

_UNMARKED = object()  # a record without the "synthetic" key: from a server older than the traffic mark


@dataclass(frozen=True)
class Window:
    """Rows of traffic in column form, with the request id and row index of every row."""

    columns: dict[str, np.ndarray]
    ids: list[str]
    row_index: np.ndarray
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None
    ts: np.ndarray | None = None

    @property
    def first_ts(self) -> float | None:
        """Log time of the first row (Unix seconds), if the records carried one."""
        return (
            float(self.ts[0]) if self.ts is not None and len(self.ts) and not np.isnan(self.ts[0]) else None
        )

    @property
    def last_ts(self) -> float | None:
        """Log time of the last row."""
        return (
            float(self.ts[-1]) if self.ts is not None and len(self.ts) and not np.isnan(self.ts[-1]) else None
        )

    @property
    def rows(self) -> int:
        """Number of rows (a request with 8 rows counts 8)."""
        return len(self.ids)

    def slice(self, lo: int, hi: int) -> Window:
        """Rows ``lo:hi`` as a window of their own."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[lo:hi]

        return Window(
            {k: v[lo:hi] for k, v in self.columns.items()}, self.ids[lo:hi], self.row_index[lo:hi],
            cut(self.labels), cut(self.probabilities), cut(self.values), cut(self.ts),
        )  # fmt: skip


class _Rows:
    """One row-aligned output under construction, fed Python lists (older records) or arrays (packed).

    Pending lists and pending arrays are never held at the same time: switching from one to the other
    converts what is pending first, so blocks stay in row order.
    """

    __slots__ = ("_arrays", "_convert", "_values", "blocks")

    def __init__(self, convert: Callable[[list[Any]], np.ndarray]) -> None:
        self._convert = convert
        self._values: list[Any] = []
        self._arrays: list[np.ndarray] = []
        self.blocks: list[np.ndarray] = []

    def extend(self, values: Iterable[Any]) -> None:
        if self._arrays:
            self.flush()
        self._values.extend(values)

    def append(self, array: np.ndarray) -> None:
        if self._values or (self._arrays and self._arrays[-1].shape[1:] != array.shape[1:]):
            self.flush()  # a different width (another number of classes) makes a block of its own
        self._arrays.append(array)

    def flush(self) -> None:
        if self._values:
            self.blocks.append(self._convert(self._values))
            self._values = []
        if self._arrays:
            self.blocks.append(np.concatenate(self._arrays).astype(np.float64, copy=False))
            self._arrays = []

    def build(self) -> np.ndarray | None:
        """All rows as one array; None if the blocks do not stack (e.g. a different number of classes)."""
        self.flush()
        if not self.blocks:
            return np.empty(0)
        if len({b.shape[1:] for b in self.blocks}) != 1:
            return None
        return np.concatenate(self.blocks)


def _floats(values: list[Any]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)  # None (missing) becomes NaN


def _first(values: list[Any]) -> np.ndarray:
    return np.array([v[0] if isinstance(v, list) else v for v in values], dtype=np.float64)


class WindowBuilder:
    """Collects log records one at a time, turning every ``flush_rows`` rows into numpy arrays.

    Only the values are kept, never the parsed records; and Python floats in lists cost about four
    times their float64 size, so they are converted block by block instead of all at the end. Numeric
    features are held as feature-major ``(n_numeric, rows)`` float64 blocks: a packed matrix (already
    feature-major) goes in as it is, many small ones joined at the next flush; an older record's lists
    are converted at the flush; and a record of the other format than the pending ones flushes them
    first, so rows stay in log order.
    """

    def __init__(
        self,
        features: Iterable[Mapping[str, str]],
        task: str,
        flush_rows: int = 8192,
        blobs: BlobReader | None = None,
    ) -> None:
        self._blobs = blobs  # reads the arrays that records keep in the log's blob files
        self.features = list(features)
        self.task = task
        self.flush_rows = flush_rows
        self._numeric = [f["name"] for f in self.features if f["kind"] == "numeric"]
        self._categorical = [f["name"] for f in self.features if f["kind"] != "numeric"]
        self._names = [f["name"] for f in self.features]
        self._numeric_lists: dict[str, list[Any]] = {name: [] for name in self._numeric}  # older records
        self._numeric_arrays: list[np.ndarray] = []  # packed matrices, (n_numeric, rows) each
        self._numeric_blocks: list[np.ndarray] = []  # (n_numeric, rows) float64, C order
        self._cols: dict[str, list[Any]] = {name: [] for name in self._categorical}
        self._blocks: dict[str, list[np.ndarray]] = {name: [] for name in self._categorical}
        # (feature, pending list) pairs: every feature for an older record, the categorical ones for a packed one
        self._feature_parts = [
            (n, self._numeric_lists[n] if n in self._numeric_lists else self._cols[n]) for n in self._names
        ]
        self._category_parts = [(n, self._cols[n]) for n in self._categorical]
        self._pending = 0
        self._ids: list[str] = []
        self._index: list[int] = []
        self._labels: list[Any] = []
        self._probabilities = _Rows(_floats)
        self._values = _Rows(_first)
        self.record_rows: list[int] = []
        self._ts: list[float] = []
        self.synthetic_rows = self.synthetic_records = 0  # left out: smoke tests, post-deploy checks
        self.unmarked_rows = 0  # taken in, from records older than the traffic mark

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one prediction-log record (either format); raise, leaving the builder unchanged, if it does
        not fit the schema or holds a malformed packed array.

        A record marked ``"synthetic": true`` is only counted (:attr:`synthetic_rows`); one without the
        key (written before the mark existed) is taken in and its rows counted in :attr:`unmarked_rows`.
        """
        rows = record.get("rows")
        inputs = record.get("inputs")
        if not isinstance(rows, int) or not isinstance(inputs, dict):
            raise MonitorError(
                f"Log record {record.get('id')!r} has no 'rows' count or 'inputs' object; is this an mlci prediction log?"
            )
        if "id" not in record:
            raise MonitorError(f"Log record with {rows} row(s) has no 'id'; is this an mlci prediction log?")
        rid = record["id"]
        mark = record.get("synthetic", _UNMARKED)
        if mark is True:  # a smoke test's or a check's request: never traffic to judge
            self.synthetic_rows += rows
            self.synthetic_records += 1
            return
        if mark is not False and mark is not _UNMARKED:
            raise MonitorError(
                f"Log record {rid!r} has 'synthetic' {mark!r:.40}; expected true or false (the server's "
                "traffic mark). Was it written by another program?"
            )
        packed = record.get("numeric")
        # Packed arrays are decoded and checked before anything is appended; the input lists are checked
        # while they are appended, and the ones already appended taken back if one does not fit.
        matrix = None
        if packed is not None:
            matrix = self._unpack(rid, "'numeric'", packed)
            if matrix.shape != (len(self._numeric), rows):
                raise MonitorError(
                    f"Log record {rid!r} has a numeric matrix of shape {tuple(matrix.shape)}, expected "
                    f"({len(self._numeric)}, {rows}): the schema's {len(self._numeric)} numeric feature(s) × "
                    f"{rows} row(s). Was it written by a server for another model?"
                )
        outputs = record.get("outputs") or {}
        if self.task == "classification":
            label = outputs.get("label")
            if type(label) is dict:
                label = self._output(rid, "label", label, rows)
            probabilities = outputs.get("probabilities")
            if type(probabilities) is dict:
                probabilities = self._output(rid, "probabilities", probabilities, rows)
            regression = None
        else:
            label = probabilities = None
            name = next(iter(outputs), None)  # the regressor's one output ("variable")
            regression = outputs[name] if name is not None else None
            if name is not None and type(regression) is dict:
                regression = self._output(rid, name, regression, rows)
        ts = record.get("ts")

        if matrix is not None:
            if self._lists_pending():
                self._flush_numeric()  # converts what is pending, changes no value
            listed = self._category_parts
        else:
            if self._numeric_arrays:
                self._flush_numeric()
            listed = self._feature_parts
        for name, parts in listed:
            column = inputs.get(name)
            if column is None or len(column) != rows:
                for _, done in listed:
                    if done is parts or not rows:
                        break
                    del done[-rows:]
                raise MonitorError(
                    f"Log record {rid!r} has {0 if column is None else len(column)} value(s) for "
                    f"feature {name!r}, expected {rows} (one per row). Was it written by a server for another model?"
                )
            parts.extend(column)
        if matrix is not None:
            self._numeric_arrays.append(matrix)
        self._pending += rows
        self._ids.extend([str(rid)] * rows)
        self._index.extend(range(rows))
        self.record_rows.append(rows)
        if mark is _UNMARKED:
            self.unmarked_rows += rows
        if self.task == "classification":
            self._labels.extend(label.ravel().tolist() if isinstance(label, np.ndarray) else label or ())
            if isinstance(probabilities, np.ndarray):
                self._probabilities.append(probabilities)
            else:
                self._probabilities.extend(probabilities or ())
        elif isinstance(regression, np.ndarray):
            self._values.append(regression[:, 0] if regression.ndim == 2 else regression.ravel())
        else:
            self._values.extend(regression or ())
        self._ts.extend([float(ts) if isinstance(ts, (int, float)) else float("nan")] * rows)
        if self._pending >= self.flush_rows:
            self._flush()

    def _unpack(self, rid: Any, where: str, packed: Any) -> np.ndarray:
        try:
            return unpack_array(packed, self._blobs)
        except ValueError as exc:
            raise MonitorError(f"Log record {rid!r} has a malformed packed array in {where}: {exc}") from None

    def _output(self, rid: Any, name: str, packed: dict[str, Any], rows: int) -> np.ndarray:
        """A packed output, unpacked and checked to hold one entry per row."""
        array = self._unpack(rid, f"output {name!r}", packed)
        if array.ndim == 0 or len(array) != rows:
            raise MonitorError(
                f"Log record {rid!r} has output {name!r} of shape {tuple(array.shape)}, expected {rows} row(s) first."
            )
        return array

    def _lists_pending(self) -> bool:
        return bool(self._numeric) and bool(self._numeric_lists[self._numeric[0]])

    def _flush_numeric(self) -> None:
        if self._numeric_arrays:
            stacked = np.concatenate(self._numeric_arrays, axis=1)
            self._numeric_blocks.append(stacked.astype(np.float64, order="C"))
            self._numeric_arrays = []
        elif self._lists_pending():
            lists = list(self._numeric_lists.values())
            self._numeric_blocks.append(np.array(lists, dtype=np.float64))  # None (missing) becomes NaN
            for parts in lists:
                parts.clear()

    def _flush(self) -> None:
        self._flush_numeric()
        for name, parts in self._cols.items():
            if parts:
                self._blocks[name].append(
                    np.array(["" if v is None else str(v) for v in parts], dtype=object)
                )
                parts.clear()
        self._probabilities.flush()
        self._values.flush()
        self._pending = 0

    def build(self) -> Window:
        """The collected rows as one :class:`Window`."""
        self._flush()
        n = len(self._ids)
        columns: dict[str, np.ndarray] = {}
        j = {name: i for i, name in enumerate(self._numeric)}
        for f in self.features:
            name = f["name"]
            parts = [block[j[name]] for block in self._numeric_blocks] if name in j else self._blocks[name]
            columns[name] = np.concatenate(parts) if parts else np.empty(0)
        labels = (
            np.asarray([str(v) for v in self._labels], dtype=object) if len(self._labels) == n and n else None
        )
        probabilities = self._probabilities.build()
        if probabilities is None or len(probabilities) != n or not n or probabilities.ndim != 2:
            probabilities = None
        values = self._values.build()
        if values is None or len(values) != n or not n or values.ndim != 1:
            values = None
        return Window(
            columns=columns,
            ids=self._ids,
            row_index=np.asarray(self._index, dtype=np.int64),
            labels=labels,
            probabilities=probabilities,
            values=values,
            ts=np.array(self._ts, dtype=np.float64),
        )


def traffic_note(synthetic_rows: int, unmarked_rows: int) -> str:
    """What a report's message adds about rows it left out, or judged without knowing what they were."""
    note = ""
    if synthetic_rows:
        note += f"; {synthetic_rows} synthetic rows (smoke tests, post-deploy checks) left out"
    if unmarked_rows:
        note += (
            f"; {unmarked_rows} rows were logged by a server from before traffic marking (no 'synthetic' "
            "field): they are judged as real traffic, and smoke or post-deploy requests among them cannot "
            "be told apart"
        )
    return note


def build_window(
    records: Sequence[Mapping[str, Any]], features: Iterable[Mapping[str, str]], task: str
) -> Window:
    """Concatenate log records (already filtered to one model) into a :class:`Window`."""
    builder = WindowBuilder(features, task)
    for record in records:
        builder.add(record)
    return builder.build()
