"""Log records → columns: missing values, multi-row requests, outputs, and records that do not fit the schema.

Both record formats: the older one (every feature a JSON list, ``record`` below) and the packed one the
server writes now (``new`` below), alone and interleaved in one window.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.window import Window, WindowBuilder, build_window
from mlci.serving.predlog import pack_array, unpack_array

FEATURES = [{"name": "age", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}]


def record(i: str, ages: list[float | None], plans: list[str], **outputs: object) -> dict[str, object]:
    """A record in the older format: every feature and output a JSON list (null = missing)."""
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
    with pytest.raises(MonitorError, match="no 'id'"):
        build_window([{"rows": 1, "inputs": {"age": [1.0], "plan": ["x"]}}], FEATURES, "classification")


def test_block_conversion_gives_the_same_window() -> None:
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
    assert (
        a.probabilities is not None
        and b.probabilities is not None
        and np.array_equal(a.probabilities, b.probabilities)
    )


# --- the packed format the server writes now (serving/predlog.py), alone and mixed with the older one ---

NUMERIC = [
    {"name": "age", "kind": "numeric"},
    {"name": "plan", "kind": "categorical"},
    {"name": "income", "kind": "numeric"},
]


def old(i: str, ages: list[float | None], incomes: list[float | None], plans: list[str]) -> dict[str, object]:
    probabilities = [[a or 0.0, 1 - (a or 0.0)] for a in ages]
    return {"id": i, "ts": 2.0, "rows": len(ages), "inputs": {"age": ages, "plan": plans, "income": incomes},
            "outputs": {"label": [f"l{i}"] * len(ages), "probabilities": probabilities}}  # fmt: skip


def new(i: str, ages: list[float | None], incomes: list[float | None], plans: list[str]) -> dict[str, object]:
    """The same record as :func:`old` gives, as the server writes it now (numeric matrix feature-major)."""
    matrix = np.array(
        [[np.nan if v is None else v for v in column] for column in (ages, incomes)], dtype=np.float32
    )
    probabilities = np.array([[a or 0.0, 1 - (a or 0.0)] for a in ages], dtype=np.float64).reshape(
        len(ages), 2
    )
    return {"id": i, "ts": 2.0, "rows": len(ages), "numeric": pack_array(matrix), "inputs": {"plan": plans},
            "outputs": {"label": [f"l{i}"] * len(ages), "probabilities": pack_array(probabilities)}}  # fmt: skip


ROWS = [  # (ages, incomes, plans) per record; values exact in float32
    ([0.25, None], [10.0, 20.0], ["x", ""]),
    ([0.5], [None], ["y"]),
    ([0.75, 0.125, 1.0], [30.0, 40.0, 50.0], ["z", "x", "y"]),
    ([None], [60.0], [""]),
    ([0.0625, 0.375], [70.0, None], ["x", "x"]),
]


def assert_same(a: Window, b: Window) -> None:
    assert a.rows == b.rows and a.ids == b.ids and a.row_index.tolist() == b.row_index.tolist()
    for name in ("age", "income"):
        assert a.columns[name].dtype == b.columns[name].dtype == np.float64
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    assert a.columns["plan"].tolist() == b.columns["plan"].tolist()
    assert a.labels is not None and b.labels is not None and a.labels.tolist() == b.labels.tolist()
    assert (
        a.probabilities is not None
        and b.probabilities is not None
        and np.array_equal(a.probabilities, b.probabilities)
    )


def test_packed_records_are_read() -> None:
    w = build_window([new(str(k), *r) for k, r in enumerate(ROWS)], NUMERIC, "classification")
    assert w.rows == 9 and w.ids == ["0", "0", "1", "2", "2", "2", "3", "4", "4"]
    assert np.array_equal(
        w.columns["age"], [0.25, np.nan, 0.5, 0.75, 0.125, 1.0, np.nan, 0.0625, 0.375], equal_nan=True
    )
    assert np.array_equal(w.columns["income"], [10, 20, np.nan, 30, 40, 50, 60, 70, np.nan], equal_nan=True)
    assert w.columns["plan"].tolist() == ["x", "", "y", "z", "x", "y", "", "x", "x"]
    assert w.labels is not None and w.labels.tolist()[:3] == ["l0", "l0", "l1"]
    assert (
        w.probabilities is not None
        and w.probabilities.shape == (9, 2)
        and w.probabilities[3].tolist() == [0.75, 0.25]
    )
    assert_same(w, build_window([old(str(k), *r) for k, r in enumerate(ROWS)], NUMERIC, "classification"))


@pytest.mark.parametrize("flush_rows", [1, 2, 3, 8192])
@pytest.mark.parametrize("pattern", ["onno", "nono", "nnoon", "oonnn"])
def test_old_and_packed_records_mixed_keep_row_order(pattern: str, flush_rows: int) -> None:
    reference = build_window([old(str(k), *r) for k, r in enumerate(ROWS)], NUMERIC, "classification")
    builder = WindowBuilder(NUMERIC, "classification", flush_rows=flush_rows)
    for k, (kind, r) in enumerate(zip(pattern, ROWS, strict=False)):
        builder.add((new if kind == "n" else old)(str(k), *r))
    mixed = builder.build()
    assert mixed.rows == sum(len(r[0]) for r in ROWS[: len(pattern)])
    assert_same(mixed, reference.slice(0, mixed.rows))


def test_packed_regression_values_and_integer_labels() -> None:
    packed = {"id": "a", "rows": 2, "numeric": pack_array(np.array([[1, 2], [3, 4]], np.float32)), "inputs": {"plan": ["x", "y"]},
              "outputs": {"variable": pack_array(np.array([[1.5], [2.5]], np.float32))}}  # fmt: skip
    listed = {
        "id": "b",
        "rows": 1,
        "inputs": {"age": [5.0], "plan": ["z"], "income": [6.0]},
        "outputs": {"variable": [[3.5]]},
    }
    w = build_window([packed, listed], NUMERIC, "regression")
    assert w.values is not None and w.values.tolist() == [1.5, 2.5, 3.5] and w.labels is None
    assert w.columns["age"].tolist() == [1.0, 2.0, 5.0] and w.columns["income"].tolist() == [3.0, 4.0, 6.0]
    labelled = {**packed, "outputs": {"label": pack_array(np.array([1, 0], np.int64))}}
    c = build_window([labelled], NUMERIC, "classification")
    assert c.labels is not None and c.labels.tolist() == ["1", "0"]


def snapshot(builder: WindowBuilder) -> tuple[object, ...]:
    w = builder.build()
    columns = [[None if v != v else v for v in w.columns[f["name"]].tolist()] for f in NUMERIC]  # NaN != NaN
    return (w.ids, w.row_index.tolist(), columns, builder.record_rows,
            None if w.labels is None else w.labels.tolist(), None if w.probabilities is None else w.probabilities.tolist())  # fmt: skip


def corrupt(r: dict[str, object], key: str, **change: object) -> dict[str, object]:
    """A copy of record ``r`` with one packed array changed (key "numeric", or "probabilities" in the outputs)."""
    if key == "numeric":
        return {**r, "id": "bad", "numeric": {**r["numeric"], **change}}  # type: ignore[dict-item]
    outputs = r["outputs"]
    return {**r, "id": "bad", "outputs": {**outputs, key: {**outputs[key], **change}}}  # type: ignore[dict-item]


def matrix(r: dict[str, object]) -> np.ndarray:
    return unpack_array(r["numeric"])


BAD = {  # mostly a good 3-row packed record (2 numeric features, id "bad") with one thing wrong
    "row-major matrix": (
        lambda r: {**r, "numeric": pack_array(matrix(r).T)},
        r"'bad' has a numeric matrix of shape \(3, 2\), expected \(2, 3\): the schema's 2 numeric feature\(s\) × 3 row\(s\)",
    ),
    "a feature too many": (
        lambda r: {**r, "numeric": pack_array(np.zeros((3, 3), np.float32))},
        r"'bad' has a numeric matrix of shape \(3, 3\), expected \(2, 3\)",
    ),
    "too few rows": (
        lambda r: {**r, "numeric": pack_array(matrix(r)[:, :2])},
        r"'bad' has a numeric matrix of shape \(2, 2\), expected \(2, 3\)",
    ),
    "flat": (
        lambda r: {**r, "numeric": pack_array(matrix(r).ravel())},
        r"'bad' has a numeric matrix of shape \(6,\), expected \(2, 3\)",
    ),
    "corrupt base64": (
        lambda r: corrupt(r, "numeric", b64="!!not base64!!"),
        r"'bad' has a malformed packed array in 'numeric': packed array data is not base64",
    ),
    "truncated data": (
        lambda r: corrupt(r, "numeric", b64=r["numeric"]["b64"][:8]),
        r"'bad' has a malformed packed array in 'numeric': packed array holds 6 bytes, but dtype <f4 and shape \[2, 3\] need 24",
    ),
    "not a packed array": (
        lambda r: {**r, "numeric": matrix(r).tolist()},
        r"'bad' has a malformed packed array in 'numeric': expected a packed array",
    ),
    "corrupt output": (  # the numeric matrix is fine: nothing of it may stay behind
        lambda r: corrupt(r, "probabilities", b64="%%%%"),
        r"'bad' has a malformed packed array in output 'probabilities': packed array data is not base64",
    ),
    "output rows": (
        lambda r: {**r, "outputs": {"label": ["a", "b", "c"], "probabilities": pack_array(np.zeros((2, 2)))}},
        r"'bad' has output 'probabilities' of shape \(2, 2\), expected 3 row\(s\)",
    ),
    "older record, last feature missing": (  # age and plan were appended before income was found missing
        lambda r: {**old("bad", *ROWS[2]), "inputs": {"age": [1.0, 2.0, 3.0], "plan": ["a", "b", "c"]}},
        r"'bad' has 0 value\(s\) for feature 'income', expected 3",
    ),
    "categorical missing": (
        lambda r: {**r, "inputs": {}},
        r"'bad' has 0 value\(s\) for feature 'plan', expected 3",
    ),
}


@pytest.mark.parametrize("flush_rows", [1, 8192])
@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("pending", ["o", "n", "on", "no"])
def test_a_bad_packed_record_is_refused_and_leaves_the_builder_unchanged(
    case: str, pending: str, flush_rows: int
) -> None:
    make, message = BAD[case]
    good = [(new if kind == "n" else old)(str(k), *ROWS[k]) for k, kind in enumerate(pending)]
    bad = make(new("bad", *ROWS[2]))
    builder = WindowBuilder(NUMERIC, "classification", flush_rows=flush_rows)
    clean = WindowBuilder(NUMERIC, "classification", flush_rows=flush_rows)
    for r in good:
        builder.add(r)
        clean.add(r)
    with pytest.raises(MonitorError, match=message):
        builder.add(bad)
    for r in (new("after", *ROWS[4]), old("last", *ROWS[3])):
        builder.add(r)
        clean.add(r)
    assert snapshot(builder) == snapshot(clean)


def test_outputs_of_another_width_give_no_probabilities_instead_of_failing() -> None:
    two, three = new("a", *ROWS[0]), new("b", *ROWS[1])
    three["outputs"] = {"label": ["l"], "probabilities": pack_array(np.full((1, 3), 1 / 3))}
    w = build_window([two, three], NUMERIC, "classification")
    assert w.rows == 3 and w.probabilities is None and w.labels is not None
    assert np.array_equal(w.columns["age"], [0.25, np.nan, 0.5], equal_nan=True)
