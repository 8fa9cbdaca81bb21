"""Run in the module's own venv: load the module as the SDK runtime's entrypoint does, and register it.

``python runtime_load.py SCHEMA TESTKIT_DIR`` (with DAGGER_MODULE, DAGGER_MAIN_OBJECT,
DAGGER_DEFAULT_PYTHON_PACKAGE and DAGGER_MODULE_FILE set). What /runtime --register does
(sdk/python/runtime/template/runtime.py → dagger.mod.cli.app at v0.21.8), with the FakeEngine of
tests/dagger/engine.py as the session in place of ``dagger.connect()``: ``load_module()`` (the
``dagger.mod`` entry point ``main_object``), then ``Module.register()``. Prints one JSON line: what was
installed and loaded, and the registered object's functions with their return types.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path


def testkit(directory: Path) -> object:
    """tests/dagger as a package of its own name, so nothing in the venv can shadow it (and it shadows nothing)."""
    spec = importlib.util.spec_from_file_location(
        "mlci_testkit", directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["mlci_testkit"] = package
    spec.loader.exec_module(package)
    return package


def main(schema_path: Path, testkit_dir: Path) -> dict[str, object]:
    """Load and register the module; return what a test checks."""
    import importlib.metadata

    import anyio
    import dagger
    import graphql
    from dagger.client._session import SharedConnection
    from dagger.mod.cli import get_entry_point, load_module

    testkit(testkit_dir)
    from mlci_testkit.engine import FakeEngine  # type: ignore[import-not-found]
    from mlci_testkit.registration import function_of  # type: ignore[import-not-found]

    fake = FakeEngine(graphql.build_schema(schema_path.read_text(encoding="utf-8")))
    SharedConnection()._session = fake
    entry_point = get_entry_point()
    anyio.run(load_module().register)
    module = fake.graph(json.loads(Path(os.environ["DAGGER_MODULE_FILE"]).read_text()))
    (obj,) = module.calls("withObject")
    typedef = fake.graph(obj["object"])
    functions = dict(function_of(fake, call["function"]) for call in typedef.calls("withFunction"))
    return {
        "dagger_io": importlib.metadata.version("dagger-io"),
        "dagger_file": dagger.__file__,
        "entry_point": entry_point.value,
        "package_file": sys.modules[entry_point.module].__file__,
        "object": typedef.one("withObject")["name"],
        "functions": {name: fn.returns for name, fn in functions.items()},
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
