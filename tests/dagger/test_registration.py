"""What `dagger functions` would list: the SDK's own registration of the module, read back from its graph.

`Module.register()` is what the Python SDK runtime runs to tell the engine the module's types; here it
runs against the fake engine, and the TypeDef graph it builds is read back into names, types and docs.
Also checks dagger.json and ci/pyproject.toml against what the SDK runtime expects of a module.
"""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from .conftest import REPO
from .registration import Fn

EXPECTED = {
    "base": "Container!", "lint": "Container!", "test": "File!", "train": "Directory!",
    "serving_image": "Container!", "monitor_image": "Container!", "smoke": "File!", "gate": "File!", "gate_report": "String!",
    "publish": "String!", "deploy": "String!", "rollback": "String!", "pipeline": "Directory!",
}  # fmt: skip


def test_the_functions_and_what_they_return(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    description, functions, _ = registered
    assert {name: fn.returns for name, fn in functions.items()} == EXPECTED
    assert description.startswith("mlci as a Dagger module")
    assert "monitor_image" in functions


def test_every_function_and_argument_is_documented(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, functions, ctor = registered
    for name, fn in {**functions, "(constructor)": ctor}.items():
        if name != "(constructor)":
            assert len(fn.doc) > 20, f"{name} has no description"
        for arg, spec in fn.args.items():
            assert len(spec.doc) > 10, f"{name}({arg}) has no Doc"


def test_source_defaults_to_the_repository_with_the_ignores(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, _, ctor = registered
    assert ctor.args["source"].type == "Directory!" and ctor.args["source"].default_path == "/"
    from mlci_dagger.main import PYTHON_IMAGE, SOURCE_IGNORE

    assert ctor.args["source"].ignore == SOURCE_IGNORE
    assert ctor.args["mlci_source"].default_path == "/" and ctor.args["mlci_source"].ignore[0] == "**"
    assert ctor.args["config"].default == "mlci.toml"
    assert ctor.args["python_image"].default == PYTHON_IMAGE


def test_checks_take_no_required_arguments(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, functions, _ = registered
    checks = {name for name, fn in functions.items() if fn.check}
    assert checks == {"lint", "test", "smoke", "gate"}
    for name in checks:
        required = [a for a, spec in functions[name].args.items() if spec.type.endswith("!") and spec.default is None]
        assert not required, f"check {name} requires {required}"


def test_side_effects_are_never_cached_and_secrets_are_secrets(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, functions, _ = registered
    assert {name for name, fn in functions.items() if fn.cache == "Never"} == {
        "gate", "gate_report", "publish", "deploy", "rollback", "pipeline"
    }
    for name, fn in functions.items():
        for arg, spec in fn.args.items():
            if arg in ("password", "kubeconfig"):
                assert spec.type == "Secret", f"{name}({arg}) is {spec.type}, not an optional Secret"
    assert {n for n, fn in functions.items() if "password" in fn.args} == {"gate", "gate_report", "publish", "deploy", "rollback", "pipeline"}
    assert functions["publish"].args["registry"].type == "String!" and functions["publish"].args["registry_service"].type == "Service"


def test_dagger_json_names_this_module_and_its_source() -> None:
    config = json.loads((REPO / "dagger.json").read_text())
    assert config["name"] == "mlci" and config["sdk"] == {"source": "python"} and config["source"] == "ci"
    assert re.fullmatch(r"v0\.21\.\d+", config["engineVersion"])
    import dagger

    sdk_minor = ".".join(dagger._engine._version.CLI_VERSION.split(".")[:2])  # type: ignore[attr-defined]
    assert config["engineVersion"].startswith(f"v{sdk_minor}.")


def test_the_sdk_runtime_finds_the_package_and_main_object() -> None:
    """The runtime imports DAGGER_DEFAULT_PYTHON_PACKAGE (the normalised project name) and DAGGER_MAIN_OBJECT."""
    pyproject = tomllib.loads((REPO / "ci" / "pyproject.toml").read_text())
    package = pyproject["project"]["name"].replace("-", "_")
    assert (REPO / "ci" / "src" / package / "__init__.py").is_file()
    # As the runtime's template (sdk/python/runtime/template/pyproject.toml at v0.21.8): no version, since the
    # SDK it vendors into ./sdk is 0.0.0, and the vendored copy as the source of dagger-io (main.go VendorConfig).
    assert pyproject["project"]["dependencies"] == ["dagger-io"]
    assert pyproject["tool"]["uv"]["sources"] == {"dagger-io": {"path": "sdk", "editable": True}}
    assert pyproject["project"]["entry-points"]["dagger.mod"]["main_object"] == f"{package}:Mlci"
    module_name = json.loads((REPO / "dagger.json").read_text())["name"]
    assert module_name[:1].upper() + module_name[1:] == "Mlci"  # strcase.ToCamel of the module name
    import importlib

    assert importlib.import_module(package).Mlci.__name__ == "Mlci"


def test_the_module_imports_nothing_from_mlci() -> None:
    for path in (REPO / "ci" / "src").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(mlci|model|serving|monitor)\b", text, re.M), path


@pytest.mark.parametrize("name", ["mlci_dagger", "mlci_dagger.main", "mlci_dagger.commands"])
def test_all_is_sorted_and_resolves(name: str) -> None:
    import importlib

    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    assert all(hasattr(module, attr) for attr in module.__all__)
