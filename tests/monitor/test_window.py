"""Log records → columns: missing values, multi-row requests, outputs, and records that do not fit the schema."""

from __future__ import annotations

import numpy as np
import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.window import build_window

FEATURES = [{"name": "age", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}]


def record(i: str, ages: list[float | None], plans: list[str], **outputs: object) -> dict[str, object]:
    return {"id": i, "ts": 1.0, "rows": len(ages), "inputs": {"age": ages, "plan": plans}, "outputs": outputs}


def test_columns_ids_and_classification_outputs() -> None:
    w = build_window(
        [record("a", [1.0, None], ["x", ""], label=["no", "yes"], probabilities=[[0.9, 0.1], [0.2, 0.8]]),
         record("b", [3.0], ["y"], label=["no"], probabilities=[[0.7, 0.3]])],
        FEATURES, "classification",
    )  # fmt: skip
    assert w.rows == 3 and w.ids == ["a", "a", "b"] and w.row_index.tolist() == [0, 1, 0]
    assert np.isnan(w.columns["age"][1]) and w.columns["age"][[0, 2]].tolist() == [1.0, 3.0]
    assert w.columns["plan"].tolist() == ["x", "", "y"]
    assert w.labels is not None and w.labels.tolist() == ["no", "yes", "no"]
    assert w.probabilities is not None and w.probabilities.shape == (3, 2)
    assert w.first_ts == w.last_ts == 1.0
    part = w.slice(1, 3)
    assert part.ids == ["a", "b"] and part.labels is not None and part.labels.tolist() == ["yes", "no"]


def test_regression_values() -> None:
    w = build_window([record("a", [1.0, 2.0], ["x", "y"], variable=[[1.5], [2.5]])], FEATURES, "regression")
    assert w.values is not None and w.values.tolist() == [1.5, 2.5] and w.labels is None


def test_a_record_for_another_schema_is_refused() -> None:
    bad = {"id": "r1", "rows": 2, "inputs": {"age": [1.0, 2.0]}, "outputs": {}}
    with pytest.raises(MonitorError, match="has 0 value\\(s\\) for feature 'plan', expected 2"):
        build_window([bad], FEATURES, "classification")
    with pytest.raises(MonitorError, match="no 'rows' count"):
        build_window([{"id": "r2"}], FEATURES, "classification")


def test_block_conversion_gives_the_same_window() -> None:
    from mlci.monitor.window import WindowBuilder

    records = [record(str(i), [float(i), None][: 1 + i % 2], ["x", "y"][: 1 + i % 2], label=["a", "b"][: 1 + i % 2],
                      probabilities=[[0.5, 0.5], [0.1, 0.9]][: 1 + i % 2]) for i in range(7)]  # fmt: skip
    small = WindowBuilder(FEATURES, "classification", flush_rows=2)
    for r in records:
        small.add(r)
    with pytest.raises(MonitorError):
        small.add({"id": "bad", "rows": 1, "inputs": {"age": [1.0]}})  # leaves the builder unchanged
    a, b = small.build(), build_window(records, FEATURES, "classification")
    assert a.rows == b.rows == 10 and a.ids == b.ids
    assert np.array_equal(a.columns["age"], b.columns["age"], equal_nan=True)
    assert a.columns["plan"].tolist() == b.columns["plan"].tolist()
    assert a.probabilities is not None and b.probabilities is not None and np.array_equal(a.probabilities, b.probabilities)
