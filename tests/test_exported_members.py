"""Every module's public names are declared, sorted, and exist."""

from __future__ import annotations

import importlib
import pkgutil

import mlci.model
import pytest

import mlci

MODULES = sorted(
    {f"mlci.{m.name}" for m in pkgutil.iter_modules(mlci.__path__)}
    | {f"mlci.model.{m.name}" for m in pkgutil.iter_modules(mlci.model.__path__)}
)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr!r}"
