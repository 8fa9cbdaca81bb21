"""An artifact mlci did not just write (a directory, or one pulled from a registry) is checked whole.

Attacks reproduced: a manifest that names files outside the artifact (an absolute path, ``../..``),
which `verify` hashed and `push` uploaded; a manifest that leaves model.onnx out, so its digest does not
cover the model; malformed file entries (tracebacks); artifact files that are links to elsewhere; and a
model.onnx whose weights are ONNX external data, which `verify` and `pull` passed (the server refuses it
since the fix in tests/serving/test_external_data.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlci.canonical import sha256_file
from mlci.cli import cli
from mlci.errors import DataError, RegistryError
from mlci.model.artifact import manifest_digest, verify_artifact
from mlci.registry import LayoutStore, Store, fetch, pull_artifact, push_artifact
from mlci.registry.store import digest_bytes
from tests.registry.test_artifacts import Counting
from tests.serving.test_external_data import externalise, reseal


def mlci(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def rewrite_manifest(artifact: Path, files: Any) -> None:
    """Give the manifest another ``files`` value and a digest that matches it again."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"] = files
    manifest["digest"] = manifest_digest(manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_manifest_naming_a_file_outside_the_artifact_is_refused(
    artifact_a: Path, tmp_path: Path, where: str
) -> None:
    """The manifest lists a file outside the artifact, with its real hash: the old `verify` hashed it and
    said ok, and the old `push` uploaded it to the registry as a layer."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the contents of a file outside the artifact\n")
    crafted = tmp_path / "a" / "b" / "crafted"
    shutil.copytree(artifact_a, crafted)
    name = str(secret) if where == "absolute" else "../../../secret.txt"
    assert (crafted / name).resolve() == secret.resolve()
    files = json.loads((crafted / "manifest.json").read_text())["files"]
    files[name] = {"sha256": sha256_file(secret), "size": secret.stat().st_size}
    rewrite_manifest(crafted, files)

    with pytest.raises(DataError, match="exactly") as info:
        verify_artifact(crafted)
    assert repr(name) in str(info.value) and info.value.exit_code == 2
    code, out = mlci("verify", str(crafted))
    assert code == 2 and "Error:" in out, out
    store = Counting(LayoutStore(tmp_path / "registry"))
    with pytest.raises(DataError):
        push_artifact(store, crafted)
    assert store.uploaded == [] and not store.has_blob(digest_bytes(secret.read_bytes()))


def test_a_manifest_that_leaves_model_onnx_out_is_refused(artifact_a: Path, tmp_path: Path) -> None:
    """Without model.onnx in the manifest its digest covers no model: the old `verify` said ok for an
    artifact whose model.onnx had been swapped for anything."""
    crafted = tmp_path / "crafted"
    shutil.copytree(artifact_a, crafted)
    files = json.loads((crafted / "manifest.json").read_text())["files"]
    del files["model.onnx"]
    rewrite_manifest(crafted, files)
    (crafted / "model.onnx").write_bytes(b"anything at all")
    with pytest.raises(DataError, match=r"does not list 'model\.onnx'"):
        verify_artifact(crafted)
    code, out = mlci("verify", str(crafted))
    assert code == 2 and "model.onnx" in out, out


@pytest.mark.parametrize(
    "files",
    [
        ["model.onnx", "outlier.onnx", "profile.json"],
        {"model.onnx": "0" * 64, "outlier.onnx": {}, "profile.json": {}},
        {"model.onnx": {"size": 1}, "outlier.onnx": {}, "profile.json": {}},
        {"model.onnx": {"sha256": 7}, "outlier.onnx": {}, "profile.json": {}},
    ],
    ids=["list", "string-entry", "no-sha256", "number-sha256"],
)
def test_malformed_file_entries_are_a_clear_error(artifact_a: Path, tmp_path: Path, files: Any) -> None:
    """The old `verify` crashed on these with AttributeError / TypeError / KeyError tracebacks."""
    crafted = tmp_path / "crafted"
    shutil.copytree(artifact_a, crafted)
    rewrite_manifest(crafted, files)
    with pytest.raises(DataError, match="manifest"):
        verify_artifact(crafted)


def test_an_artifact_file_that_is_a_link_is_refused(artifact_a: Path, tmp_path: Path) -> None:
    """model.onnx is a symlink to a file elsewhere (with the same bytes, so every hash matches): `verify`
    would vouch for whatever the link points at later, and `serve` would load it."""
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.copyfile(artifact_a / "model.onnx", elsewhere)
    crafted = tmp_path / "crafted"
    shutil.copytree(artifact_a, crafted)
    (crafted / "model.onnx").unlink()
    os.symlink(elsewhere, crafted / "model.onnx")
    with pytest.raises(DataError, match="link"):
        verify_artifact(crafted)


def test_mlci_verify_refuses_onnx_external_data(artifact_a: Path, tmp_path: Path) -> None:
    """model.onnx keeps a weight in an external file next to it (re-sealed, so every hash matches): the
    old `mlci verify` said ok, and the weights would come from whatever file the location names."""
    crafted, _ = externalise(artifact_a, tmp_path / "crafted", "mlci.toml")
    code, out = mlci("verify", str(crafted))
    assert code == 2 and "external files" in out and "mlci.toml" in out, out
    outlier, _ = externalise(artifact_a, tmp_path / "crafted-outlier", "x.bin")
    shutil.copyfile(artifact_a / "model.onnx", outlier / "model.onnx")  # only outlier.onnx is crafted now
    shutil.copyfile(crafted / "model.onnx", outlier / "outlier.onnx")
    reseal(outlier)
    code, out = mlci("verify", str(outlier))
    assert code == 2 and "outlier.onnx" in out and "external files" in out, out


def test_pull_refuses_onnx_external_data(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    """The crafted artifact pushed to a real registry (push checks hashes only): the old `pull` wrote it
    out and returned it, and `mlci serve --registry` cached it."""
    crafted, _ = externalise(artifact_a, tmp_path / "crafted", ".env")
    digest = push_artifact(store, crafted).artifact_digest
    with pytest.raises(RegistryError, match=r"external files.*\.env") as info:
        pull_artifact(store, "candidate", tmp_path / "out" / "pulled")
    assert digest in str(info.value) or "candidate" in str(info.value)
    assert not (tmp_path / "out" / "pulled").exists()
    with pytest.raises(RegistryError, match="external files"):
        fetch(store, "candidate", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cache_entry_holding_something_else_is_replaced(
    store: Store, artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    """The cache directory named for artifact A holds artifact B (self-consistent, so it verifies): the
    old fetch returned it as A, and `mlci serve --registry` served B under the name the user asked for."""
    digest = push_artifact(store, artifact_a).artifact_digest
    cache = tmp_path / "cache"
    shutil.copytree(artifact_b, cache / digest.replace(":", "-"))
    served = fetch(store, "candidate", cache)
    assert served == cache / digest.replace(":", "-")
    assert verify_artifact(served)["digest"] == digest
    assert sorted(p.name for p in cache.iterdir()) == [served.name]
