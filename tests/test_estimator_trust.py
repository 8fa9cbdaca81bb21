"""estimator.skops comes from the workspace or a restored cache: loading it must never run code or read files.

Each attack is a real crafted skops file (the zip's schema.json edited the way an attacker would) that the
old loader executed: it trusted whole name prefixes (`builtins.`, `pandas.`, …) and the module that
`train.json` named, and skops calls a trusted name with arguments from the file while it loads.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mlci.canonical import sha256_file
from mlci.cli import cli
from mlci.config import load_config
from mlci.errors import ConfigError, DataError
from mlci.pipeline import run_pipeline
from mlci.workspace import Workspace

from .conftest import ProjectFactory, mixed_frame


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def rewrite_skops(path: Path, edit: Callable[[dict[str, Any], dict[str, bytes]], None]) -> None:
    """Rewrite a skops zip in place after ``edit`` changed its schema (and, if it likes, other members)."""
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist()}
    schema = json.loads(members["schema.json"])
    edit(schema, members)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)


def call_node(module: str, name: str, *args: str) -> dict[str, Any]:
    """A skops node that makes the loader call ``module.name(*args)``: how skops restores `__reduce__` objects."""
    return {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": [
                {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(a), "is_json": True}
                for a in args
            ],
        },
    }


def plant(path: Path, node: dict[str, Any]) -> None:
    """Put ``node`` where the fitted Pipeline keeps its `memory` (None): the model still predicts the same."""

    def edit(schema: dict[str, Any], _members: dict[str, bytes]) -> None:
        attrs = schema["content"]["content"]
        assert "memory" in attrs, sorted(attrs)
        attrs["memory"] = node

    rewrite_skops(path, edit)


@pytest.fixture
def trained(example_project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """`mlci train` output of the bundled example: (config, train directory)."""
    out = tmp_path / "train"
    code, text = invoke("train", "-c", str(example_project), "--out", str(out))
    assert code == 0, text
    return example_project, out


def export_is_refused(config: Path, train_dir: Path, marker: Path, *expected: str) -> None:
    out = train_dir.parent / "export"
    code, text = invoke("export", "-c", str(config), "--train", str(train_dir), "--out", str(out))
    assert not marker.exists(), f"the crafted estimator.skops ran code while loading (exit {code}): {text}"
    assert code == 2, text
    for part in expected:
        assert part in text, text
    assert "Traceback" not in text
    assert not out.exists()


def test_export_refuses_a_file_that_calls_builtins_exec(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Attack: a ConstructorFromReduceNode naming `builtins.exec` with Python source as its argument.

    The old loader trusted every `builtins.` name, so skops called exec(source) while loading.
    """
    config, train_dir = trained
    marker = tmp_path / "exec-ran"
    plant(train_dir / "estimator.skops", call_node("builtins", "exec", f"open({str(marker)!r}, 'w').close()"))
    export_is_refused(config, train_dir, marker, "builtins.exec", "does not trust", "mlci train")


def test_export_refuses_a_file_that_calls_pandas_read_pickle(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Attack: `pandas.read_pickle` on a pickle planted in the workspace; unpickling it runs code.

    The old loader trusted every `pandas.` name, so skops called read_pickle(planted path).
    """
    config, train_dir = trained
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    planted = train_dir / "notes.pkl"
    planted.write_bytes(pickle.dumps(Payload()))
    plant(train_dir / "estimator.skops", call_node("pandas", "read_pickle", str(planted)))
    export_is_refused(config, train_dir, marker, "pandas.read_pickle", "does not trust")


def test_export_refuses_posix_system_even_when_train_json_names_posix(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Attack: `posix.system(cmd)`, with train.json's `factory_module` set to `posix`.

    The old loader trusted every name under the module train.json named (a workspace file); what is
    trusted must come from mlci.toml only.
    """
    config, train_dir = trained
    marker = tmp_path / "system-ran"
    plant(train_dir / "estimator.skops", call_node("posix", "system", f"touch {marker}"))
    summary = json.loads((train_dir / "train.json").read_text())
    summary["factory_module"] = "posix"
    (train_dir / "train.json").write_text(json.dumps(summary))
    export_is_refused(config, train_dir, marker, "posix.system", "does not trust")


def test_export_refuses_a_trusted_class_in_a_loader_mlci_never_writes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Attack: a type mlci does trust (numpy.dtype) in a node that calls it with file-chosen arguments.

    Trust is per (skops loader, type): mlci's training never stores anything as a constructor call.
    """
    config, train_dir = trained
    plant(train_dir / "estimator.skops", call_node("numpy", "dtype", "float64"))
    export_is_refused(config, train_dir, tmp_path / "none", "numpy.dtype (as ConstructorFromReduceNode)", "does not trust")


def test_export_refuses_a_tree_whose_child_points_outside_it(make_project: ProjectFactory, tmp_path: Path) -> None:
    """Attack: a decision tree whose node 0 has a child index far past the end of its node array.

    scikit-learn walks the nodes without bounds checks, so the old loader handed a tree to `predict`
    that read memory outside it (the export process crashed with SIGSEGV). Run in a subprocess for that.
    """
    config = make_project('class = "sklearn.tree.DecisionTreeClassifier"\nparams = { max_depth = 3 }')
    train_dir = tmp_path / "train"
    code, text = invoke("train", "-c", str(config), "--out", str(train_dir))
    assert code == 0, text

    def edit(schema: dict[str, Any], members: dict[str, bytes]) -> None:
        stack: list[Any] = [schema]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("__loader__") == "TreeNode":
                    nodes_file = node["content"]["content"]["nodes"]["file"]
                    nodes = np.load(io.BytesIO(members[nodes_file]), allow_pickle=False)
                    nodes["left_child"][0] = 10**9
                    buffer = io.BytesIO()
                    np.save(buffer, nodes, allow_pickle=False)
                    members[nodes_file] = buffer.getvalue()
                    return
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        raise AssertionError("no tree in the file")

    rewrite_skops(train_dir / "estimator.skops", edit)
    done = subprocess.run(
        [sys.executable, "-m", "mlci", "export", "-c", str(config), "--train", str(train_dir), "--out", str(tmp_path / "export")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "child" in done.stderr and "estimator.skops" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --- the stage cache: a poisoned entry (e.g. a CI cache) is refused ----------------------------------


def _poison_train_entry(example_project: Path, marker: Path) -> Path:
    config = load_config(example_project)
    first = run_pipeline(config, until="evaluate")
    entry = Workspace(config.workspace).stage_dir("train", first.stages[0].key)
    plant(entry / "estimator.skops", call_node("builtins", "exec", f"open({str(marker)!r}, 'w').close()"))
    # A change to [export] only: training is a cache hit, export loads the cached estimator.skops.
    example_project.write_text(example_project.read_text() + "\n[export]\nabs_tolerance = 1e-4\n")
    return entry


def _run_error(example_project: Path) -> str | None:
    try:
        run_pipeline(load_config(example_project), until="evaluate")
    except DataError as exc:
        return str(exc)
    return None


def test_a_modified_cache_entry_is_refused_with_how_to_clear_it(example_project: Path, tmp_path: Path) -> None:
    """Attack: overwrite `.mlci/cache/train/<key>/estimator.skops`, change [export], `mlci run`.

    The old pipeline took the entry as a cache hit and export ran the planted code. Each entry now
    records the sha256 of its files, bound to its key, and a mismatch is refused.
    """
    marker = tmp_path / "cache-exec-ran"
    entry = _poison_train_entry(example_project, marker)
    error = _run_error(example_project)
    assert not marker.exists(), "the poisoned cache entry ran code"
    assert error is not None and "was modified" in error, error
    assert "estimator.skops" in error and str(entry) in error and "--no-cache" in error, error
    # Refusing loses nothing; --no-cache rebuilds the entry from the data and the config.
    rebuilt = run_pipeline(load_config(example_project), use_cache=False, until="evaluate")
    assert rebuilt.status == "ok" and not marker.exists()
    assert run_pipeline(load_config(example_project), until="evaluate").stages[0].cache_hit


def test_a_cache_entry_with_a_rewritten_record_is_still_refused(example_project: Path, tmp_path: Path) -> None:
    """Attack: as above, and the entry's record of file digests rewritten to match the planted file.

    The record lives in the workspace too, so it cannot be the only defence: the type check refuses.
    """
    marker = tmp_path / "cache-exec-ran"
    entry = _poison_train_entry(example_project, marker)
    record = json.loads((entry / "stage.json").read_text())
    record.setdefault("files", {})["estimator.skops"] = sha256_file(entry / "estimator.skops")
    (entry / "stage.json").write_text(json.dumps(record))
    error = _run_error(example_project)
    assert not marker.exists(), "the poisoned cache entry ran code"
    assert error is not None and "builtins.exec" in error and "does not trust" in error, error


def test_a_cache_entry_copied_under_another_key_is_refused(example_project: Path, tmp_path: Path) -> None:
    """Attack: an entry (with its record) copied from another key: the record names the key it was written for."""
    config = load_config(example_project)
    first = run_pipeline(config, until="evaluate")
    ws = Workspace(config.workspace)
    entry = ws.stage_dir("export", first.stages[1].key)
    example_project.write_text(example_project.read_text() + "\n[export]\nabs_tolerance = 1e-4\n")
    config = load_config(example_project)
    from mlci.stages import code_digest, factory_source, stage_keys

    keys = stage_keys(config, sha256_file(config.data.path), code_digest(), factory_source(config))
    shutil.copytree(entry, ws.stage_dir("export", keys["export"]))
    error = _run_error(example_project)
    assert error is not None and "was modified" in error and keys["export"] in error, error


# --- what is trusted: the types mlci's own training writes, plus classes mlci.toml names --------------


def _fitted_types(root: Path, estimator: str, classifier: bool, factory: str = "") -> set[tuple[str, str]]:
    """The (loader, type) pairs in estimator.skops when mlci trains ``estimator`` (TOML) on mixed data."""
    import skops.io as sio

    from mlci.model.estimators import build_estimator
    from mlci.model.train import load_data, split_dataset
    from mlci.model.trust import estimator_types

    from .conftest import BASE_TOML

    frame = mixed_frame()
    root.mkdir()
    if factory:  # numeric columns only: the factory's bare model gets mlci's column selector
        frame = frame.drop(columns=["plan", "region"]).fillna({"age": 40.0})
        (root / "bare_model.py").write_text(factory)
    frame.to_csv(root / "data.csv", index=False)
    (root / "mlci.toml").write_text(
        BASE_TOML.format(
            name="types", task="classification" if classifier else "regression", target="churn" if classifier else "spend",
            estimator=estimator, data_extra='drop = ["spend"]' if classifier else 'drop = ["churn"]',
        )
    )
    config = load_config(root / "mlci.toml")
    data = load_data(config)
    mask = split_dataset(data, config)
    fitted = build_estimator(config.estimator, data.schema, config.seed, config.root)
    fitted.fit(data.X[~mask], data.y[~mask])
    return estimator_types(sio.dumps(fitted), "test")


def test_trusted_types_are_exactly_what_mlci_training_writes(tmp_path: Path) -> None:
    """The built-in list is derived, not guessed: every supported estimator's file, and nothing more; all classes.

    Each estimator mlci supports goes through mlci's own preprocessing; a factory's model that does not
    select columns gets mlci's column selector.
    """
    import importlib
    import inspect
    import warnings

    from sklearn.base import is_classifier

    from mlci.model.estimators import KNOWN_ESTIMATORS
    from mlci.model.trust import TRAINED_TYPES

    written: set[tuple[str, str]] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in KNOWN_ESTIMATORS:
            module, _, name = path.rpartition(".")
            classifier = is_classifier(getattr(importlib.import_module(module), name)())
            written |= _fitted_types(tmp_path / name, f'class = "{path}"', classifier)
        bare = "from sklearn.linear_model import LogisticRegression\n\n\ndef make():\n    return LogisticRegression()\n"
        written |= _fitted_types(tmp_path / "factory", 'factory = "bare_model:make"', True, factory=bare)
    assert written == set(TRAINED_TYPES), (sorted(written - TRAINED_TYPES), sorted(TRAINED_TYPES - written))
    for _loader, name in TRAINED_TYPES:
        module, _, attr = name.rpartition(".")
        assert inspect.isclass(getattr(importlib.import_module(module), attr)), f"{name} is not a class"


FACTORY_NB = '''
from sklearn.naive_bayes import GaussianNB


def make():
    return GaussianNB()
'''


def test_a_factory_type_outside_the_list_must_be_named_in_mlci_toml(make_project: ProjectFactory) -> None:
    """A factory's types are trusted only when mlci.toml lists them; train says exactly what to add."""
    frame = mixed_frame().drop(columns=["plan", "region", "spend"]).fillna({"age": 40.0})
    config_path = make_project('factory = "my_models:make"', frame=frame, data_extra="")
    (config_path.parent / "my_models.py").write_text(FACTORY_NB)
    with pytest.raises(ConfigError, match=r'trusted_types = \["sklearn.naive_bayes.GaussianNB"\]'):
        run_pipeline(load_config(config_path), until="evaluate")
    config_path.write_text(config_path.read_text().replace(
        'factory = "my_models:make"', 'factory = "my_models:make"\ntrusted_types = ["sklearn.naive_bayes.GaussianNB"]'
    ))
    result = run_pipeline(load_config(config_path), until="evaluate")
    assert result.status == "ok" and result.stages[1].detail["label_agreement"] == 1.0


def test_the_class_mlci_toml_names_is_trusted_without_listing_it(make_project: ProjectFactory) -> None:
    """`class = ...` outside mlci's tested list: the config names it, so that exact class is trusted."""
    result = run_pipeline(load_config(make_project('class = "sklearn.naive_bayes.GaussianNB"')), until="evaluate")
    assert result.status == "ok"


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("posix.system", "is not a class"),
        ("builtins.exec", "is not a class"),
        ("no_such_module_here.Thing", "cannot be imported"),
        ("my_models.Popen", "'subprocess.Popen'"),
        ("Popen", "full import path"),
    ],
)
def test_trusted_types_names_only_classes_by_their_own_name(make_project: ProjectFactory, listed: str, expected: str) -> None:
    """`trusted_types` can never trust a function (skops would call it), nor a class under an alias."""
    config_path = make_project(f'factory = "my_models:make"\ntrusted_types = ["{listed}"]')
    (config_path.parent / "my_models.py").write_text(FACTORY_NB + "\nfrom subprocess import Popen\n")
    code, out = invoke("run", "-c", str(config_path))
    assert code == 2, out
    assert "trusted_types" in out and expected in out, out
    assert "Traceback" not in out
