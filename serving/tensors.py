"""One tensor's data, element by element: V2 datatypes, JSON and binary values, missing values, errors.

Pure and framework-free; :mod:`mlci.serving.protocol` calls these once it knows which input a value
belongs to, so every error names the input and the element.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

from mlci.serving.errors import BadRequest, InvalidInput

__all__ = [
    "BYTES",
    "ClassLabels",
    "INTEGER_DATATYPES",
    "KNOWN_DATATYPES",
    "MISSING_TOKENS",
    "NUMBER_TYPES",
    "NUMERIC_DATATYPES",
    "NUMERIC_LIST",
    "binary_tensor",
    "categories_from_binary",
    "categories_from_json",
    "flatten",
    "json_type",
    "numbers_from_binary",
    "numbers_from_json",
    "reject_infinite",
    "show",
]

BYTES = "BYTES"
# Little-endian, as the binary tensor extension specifies.
NUMERIC_DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "FP16": "f2", "FP32": "f4", "FP64": "f8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
    }.items()
}  # fmt: skip
INTEGER_DATATYPES = frozenset(n for n in NUMERIC_DATATYPES if "INT" in n)
KNOWN_DATATYPES = frozenset(NUMERIC_DATATYPES) | {"BOOL", "BYTES", "BF16"}
NUMERIC_LIST = "FP32 (or FP64, FP16, INT8-INT64, UINT8-UINT64)"
# Same spellings as model/data.py's _MISSING: serving must read a category the way training did.
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a"})
NUMBER_TYPES = frozenset({float, int})


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _shower() -> reprlib.Repr:
    # Bounded in depth, length and digits: a client's value nested 1,000 deep, or an integer of 5,000 digits,
    # must still make an error message (repr() recurses and refuses long integers).
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxlong, r.maxother = 3, 6, 4, 60, 40, 60
    return r


_SHOW = _shower()


def show(value: Any, limit: int = 60) -> str:
    """A short, always-computable ``repr`` of a client's value for an error message."""
    text = _SHOW.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flatten(name: str, shape: list[int], data: list[Any], rows: int) -> list[Any]:
    """``data`` as a flat list of ``rows`` elements; nested ``[[v], [v]]`` is accepted for shape [N, 1]."""
    if len(data) == rows and not any(type(x) is list for x in data):
        return data
    if len(data) == rows and all(type(x) is list and len(x) == 1 for x in data):
        return [x[0] for x in data]
    count = sum(len(x) if type(x) is list else 1 for x in data)
    raise InvalidInput(
        f"Input {name!r} has shape {shape} ({rows} values), but its data holds {count} values"
        f"{' in nested lists' if any(type(x) is list for x in data) else ''}. Make the shape match the data."
    )


def numbers_from_json(
    name: str, datatype: str, shape: list[int], data: list[Any], rows: int
) -> tuple[np.ndarray, list[Any]]:
    flat = flatten(name, shape, data, rows)
    integer = datatype in INTEGER_DATATYPES
    values: list[float] = []
    for j, x in enumerate(flat):
        kind = type(x)
        if kind is float:
            if integer and not x.is_integer():
                raise InvalidInput(
                    f"Input {name!r} is declared {datatype}, but element {j} is {x!r}, not an integer. "
                    "Declare FP32/FP64 or send integers."
                )
            values.append(x)
        elif kind is int:
            values.append(float(x))  # orjson reads integers beyond 64 bits as floats, so this cannot overflow
        elif x is None:
            values.append(float("nan"))
        else:
            raise InvalidInput(
                f"Input {name!r} ({datatype}) element {j} is {show(x)} ({json_type(x)}); expected a number, "
                "or null for a missing value."
            )
    return np.array(values, dtype=np.float64).astype(np.float32), flat


def numbers_from_binary(name: str, datatype: str, raw: memoryview, rows: int) -> np.ndarray:
    dtype = NUMERIC_DATATYPES[datatype]
    if len(raw) != rows * dtype.itemsize:
        raise InvalidInput(
            f"Input {name!r} has {rows} rows of {datatype} ({rows * dtype.itemsize} bytes), but binary_data_size "
            f"is {len(raw)} bytes. Make the shape match the data."
        )
    return np.frombuffer(raw, dtype=dtype).astype(np.float32)


def reject_infinite(name: str, array: np.ndarray, original: list[Any] | None) -> None:
    infinite = np.isinf(array)
    if infinite.any():
        j = int(np.flatnonzero(infinite)[0])
        shown = show(original[j]) if original is not None else str(array[j])
        raise InvalidInput(
            f"Input {name!r} element {j} is {shown}, which is not a finite float32 number (|x| < 3.4e38). "
            "Infinite values are rejected; send null (or NaN in binary data) for a missing value."
        )


def _category(name: str, j: int, value: Any) -> str:
    if type(value) is str:
        text = value.strip()
        return "" if text.lower() in MISSING_TOKENS else text
    if value is None:
        return ""
    raise InvalidInput(
        f"Input {name!r} (BYTES) element {j} is {show(value)} ({json_type(value)}); expected a string, "
        "or null for a missing category."
    )


def categories_from_json(name: str, shape: list[int], data: list[Any], rows: int) -> list[str]:
    return [_category(name, j, x) for j, x in enumerate(flatten(name, shape, data, rows))]


def categories_from_binary(name: str, raw: memoryview, rows: int) -> list[str]:
    values: list[str] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise BadRequest(f"Input {name!r}: binary BYTES data ends inside a 4-byte length prefix.")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        start, offset = offset + 4, offset + 4 + size
        if offset > end:
            raise BadRequest(
                f"Input {name!r}: element {len(values)} declares {size} bytes, but the data ends first."
            )
        try:
            text = str(raw[start:offset], "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"Input {name!r} element {len(values)} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "this model's BYTES inputs are text categories. Send UTF-8 strings."
            ) from None
        values.append(_category(name, len(values), text))
    if len(values) != rows:
        raise InvalidInput(
            f"Input {name!r} has {rows} rows, but its binary data holds {len(values)} strings."
        )
    return values


def _length_prefixed(value: Any) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return len(raw).to_bytes(4, "little") + raw


def binary_tensor(datatype: str, array: np.ndarray) -> bytes:
    if datatype == BYTES:
        # Labels repeat (a few classes): encode each distinct value once.
        values = array.ravel().tolist()
        encoded = {value: _length_prefixed(value) for value in set(values)}
        return b"".join(map(encoded.__getitem__, values))
    return np.ascontiguousarray(array, dtype=NUMERIC_DATATYPES[datatype]).tobytes()


class ClassLabels:
    """A classifier's class names by index: names for JSON and the log, V2 binary bytes, counts per class."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.classes = tuple(names)
        self.names = np.array(names, dtype=object)
        self._binary = np.array([_length_prefixed(name) for name in names], dtype=object)

    def strings(self, index: np.ndarray) -> np.ndarray:
        """The class name of every index, same shape (an object array of the same few str objects)."""
        return self.names.take(index)

    def binary(self, index: np.ndarray) -> bytes:
        """The BYTES tensor of those names in the binary extension's form (4-byte length + UTF-8 each)."""
        return b"".join(self._binary.take(index.ravel()).tolist())

    def counts(self, index: np.ndarray) -> list[tuple[str, int]]:
        """(name, rows) for every class predicted at least once."""
        if index.size == 1:
            return [(self.names[int(index.flat[0])], 1)]
        per_class = np.bincount(index.ravel(), minlength=len(self.names)).tolist()
        return [(name, count) for name, count in zip(self.names.tolist(), per_class, strict=False) if count]
