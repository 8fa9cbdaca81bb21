"""The module's functions executed for real in the graph executor (tests/dagger/executor).

Each test makes the same call `dagger call` makes (the SDK's own invoke path, the arguments as the engine
passes them) and the executor runs the graph with the engine's semantics: the stand-in python image built
by mmdebstrap, every exec in bwrap over overlayfs layers, services in network namespaces, images pushed to
Debian's docker-registry on 127.0.0.1. What this cannot show (BuildKit's cache, the real image, other
platforms) is listed in docs/dagger.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import dagger
import pytest

from .conftest import REPO, Caller

pytestmark = pytest.mark.executor

CONFIG = "examples/breast_cancer/mlci.toml"
MLCI = Path(sys.executable).with_name("mlci")


def load(cls: Any, object_id: str) -> Any:
    """The SDK object for an ID a function returned (node(id:), as the SDK's own converter loads it)."""
    from dagger import dag

    return cls(dag._ctx.select_id(cls._graphql_name(), object_id))


def export_dir(directory_id: str, dest: Path) -> Path:
    """`dagger call … export --path=DEST` of a Directory a function returned."""

    async def go() -> None:
        await load(dagger.Directory, directory_id).export(str(dest))

    anyio.run(go)
    return dest


def file_contents(file_id: str) -> str:
    async def go() -> str:
        return await load(dagger.File, file_id).contents()

    return anyio.run(go)


def local_digest(tmp_path: Path) -> str:
    """The artifact digest `mlci run` gives on this commit, in a copy of the bundled example."""
    src = tmp_path / "local"
    shutil.copytree(REPO / "examples" / "breast_cancer", src, ignore=shutil.ignore_patterns(".mlci"))
    done = subprocess.run(
        [str(MLCI), "run", "--until", "evaluate", "--json"],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((Path(json.loads(done.stdout)["artifact"]) / "manifest.json").read_text())["digest"]


def test_train_gives_the_digest_mlci_run_gives(xcall: Caller, executed: Any, tmp_path: Path) -> None:
    """`dagger call train` builds the artifact in the containers; its digest is `mlci run`'s on this commit."""
    out = export_dir(xcall("train", ctor_args={"config": CONFIG}), tmp_path / "artifact")
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) >= ["manifest.json", "model.onnx"]
    assert manifest["digest"] == local_digest(tmp_path)


def test_smoke_sends_holdout_rows_to_the_serving_image_as_a_service(xcall: Caller, executed: Any, tmp_path: Path) -> None:
    """`dagger call smoke`: the serving image started as a service in its own network namespace, reached
    by its alias from the client container, real holdout rows compared with in-process predictions."""
    smoke = json.loads(file_contents(xcall("smoke", ctor_args={"config": CONFIG})))
    assert smoke["passed"] is True, smoke
    assert any(e.get("argv", [])[:2] == ["mlci", "smoke"] for e in executed.log)
