"""A window of logged traffic as columns: what the drift, outlier and performance checks read.

Prediction-log records carry one list per feature and per output (one entry per row of the request);
a window concatenates them into one numpy column per feature (numeric: float64 with NaN for a missing
value; categorical: ``str`` with ``""`` for a missing one) and one array per output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlci.monitor.errors import MonitorError

__all__ = ["Window", "WindowBuilder", "build_window"]


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
        return float(self.ts[0]) if self.ts is not None and len(self.ts) and not np.isnan(self.ts[0]) else None

    @property
    def last_ts(self) -> float | None:
        """Log time of the last row."""
        return float(self.ts[-1]) if self.ts is not None and len(self.ts) and not np.isnan(self.ts[-1]) else None

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


class WindowBuilder:
    """Collects log records one at a time, turning every ``flush_rows`` rows into numpy arrays.

    Only the values are kept, never the parsed records; and Python floats in lists cost about four
    times their float64 size, so they are converted block by block instead of all at the end.
    """

    def __init__(self, features: Iterable[Mapping[str, str]], task: str, flush_rows: int = 8192) -> None:
        self.features = list(features)
        self.task = task
        self.flush_rows = flush_rows
        self._cols: dict[str, list[Any]] = {f["name"]: [] for f in self.features}
        self._blocks: dict[str, list[np.ndarray]] = {f["name"]: [] for f in self.features}
        self._pending = 0
        self._ids: list[str] = []
        self._index: list[int] = []
        self._labels: list[Any] = []
        self._probabilities: list[Any] = []
        self._probability_blocks: list[np.ndarray] = []
        self._values: list[Any] = []
        self.record_rows: list[int] = []
        self._ts: list[float] = []

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one prediction-log record; raise (leaving the builder unchanged) if it does not fit the schema."""
        rows = record.get("rows")
        inputs = record.get("inputs")
        if not isinstance(rows, int) or not isinstance(inputs, dict):
            raise MonitorError(f"Log record {record.get('id')!r} has no 'rows' count or 'inputs' object; is this an mlci prediction log?")
        for name, parts in self._cols.items():
            column = inputs.get(name)
            if column is None or len(column) != rows:
                for undo in self._cols.values():
                    del undo[self._pending :]
                raise MonitorError(
                    f"Log record {record.get('id')!r} has {0 if column is None else len(column)} value(s) for "
                    f"feature {name!r}, expected {rows} (one per row). Was it written by a server for another model?"
                )
            parts.extend(column)
        self._pending += rows
        self._ids.extend([str(record["id"])] * rows)
        self._index.extend(range(rows))
        self.record_rows.append(rows)
        outputs = record.get("outputs") or {}
        if self.task == "classification":
            self._labels.extend(outputs.get("label", ()))
            self._probabilities.extend(outputs.get("probabilities", ()))
        else:
            first: list[Any] = next(iter(outputs.values()), [])
            self._values.extend(v[0] if isinstance(v, list) else v for v in first)
        ts = record.get("ts")
        self._ts.extend([float(ts) if isinstance(ts, (int, float)) else float("nan")] * rows)
        if self._pending >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        kinds = {f["name"]: f["kind"] for f in self.features}
        for name, parts in self._cols.items():
            if kinds[name] == "numeric":
                self._blocks[name].append(np.array(parts, dtype=np.float64))  # None (missing) becomes NaN
            else:
                self._blocks[name].append(np.array(["" if v is None else str(v) for v in parts], dtype=object))
            parts.clear()
        if self._probabilities:
            self._probability_blocks.append(np.asarray(self._probabilities, dtype=np.float64))
            self._probabilities.clear()
        self._pending = 0

    def build(self) -> Window:
        """The collected rows as one :class:`Window`."""
        self._flush()
        n = len(self._ids)
        columns = {
            f["name"]: np.concatenate(self._blocks[f["name"]]) if self._blocks[f["name"]] else np.empty(0)
            for f in self.features
        }
        probabilities = np.concatenate(self._probability_blocks) if self._probability_blocks else np.empty((0, 0))
        return Window(
            columns=columns,
            ids=self._ids,
            row_index=np.asarray(self._index, dtype=np.int64),
            labels=np.asarray([str(v) for v in self._labels], dtype=object) if len(self._labels) == n and n else None,
            probabilities=probabilities if len(probabilities) == n and n and probabilities.ndim == 2 else None,
            values=np.array(self._values, dtype=np.float64) if len(self._values) == n and n else None,
            ts=np.array(self._ts, dtype=np.float64),
        )


def build_window(records: Sequence[Mapping[str, Any]], features: Iterable[Mapping[str, str]], task: str) -> Window:
    """Concatenate log records (already filtered to one model) into a :class:`Window`."""
    builder = WindowBuilder(features, task)
    for record in records:
        builder.add(record)
    return builder.build()
