"""Canonical JSON: equal values give equal bytes, whatever the key order or numeric type."""

from __future__ import annotations

import numpy as np

from mlci.canonical import canonical_json, digest_of


def test_key_order_and_numpy_scalars_do_not_matter() -> None:
    a = {"b": 1, "a": [1.5, "x"], "c": {"z": 1, "y": 2}}
    b = {"c": {"y": 2, "z": np.int64(1)}, "a": (np.float64(1.5), "x"), "b": 1}
    assert canonical_json(a) == canonical_json(b) == b'{"a":[1.5,"x"],"b":1,"c":{"y":2,"z":1}}'
    assert digest_of(a) == digest_of(b)


def test_non_finite_floats_become_json() -> None:
    assert canonical_json([float("nan"), float("inf"), -float("inf")]) == b'[null,"inf","-inf"]'


def test_unicode_is_kept() -> None:
    assert canonical_json({"é": "ü"}) == '{"é":"ü"}'.encode()
