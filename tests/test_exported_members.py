"""Every module's public names are declared, sorted, and exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ("mlci", "mlci.model", "mlci.serving", "mlci.monitor")


def _modules() -> list[str]:
    names = set(PACKAGES)
    for package in PACKAGES:
        module = importlib.import_module(package)
        # model/, serving/, monitor/ are mapped into mlci by pyproject, so walk each package's own path.
        names |= {m.name for m in pkgutil.walk_packages(module.__path__, package + ".")}
    # The CLI entry point runs on import; the mapped packages show up twice under the mlci walk.
    return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr!r}"
