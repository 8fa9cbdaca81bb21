"""`mlci serve <tag> --registry … --repository …`: pull into the digest-named cache, verify, serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.pipeline import run_pipeline
from mlci.registry import fetch, open_store, push_artifact
from mlci.release.smoke import ServerProcess, free_port, wait_ready

from .conftest import EXAMPLE


def test_serve_pulls_a_tag_into_the_cache_and_serves_it(tmp_path: Path) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    artifact = run_pipeline(load_config(root / "mlci.toml"), until="evaluate").artifact
    assert artifact is not None
    registry = tmp_path / "registry"
    digest = push_artifact(open_store(f"oci-layout:{registry}", "breast-cancer"), artifact, tags=("production",)).artifact_digest

    port = free_port()
    env = {**os.environ, "MLCI_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "mlci", "serve", "production", "--registry", f"oci-layout:{registry}",
            "--repository", "breast-cancer", "--port", str(port), "--no-log"]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server.url, 30, server)
        meta = httpx.get(f"{server.url}/v2/models/breast-cancer", timeout=5).json()
        assert meta["versions"] == [digest]
    finally:
        server.stop()
    assert (tmp_path / "cache" / digest.replace(":", "-") / "model.onnx").is_file()


def test_fetch_reuses_the_cached_artifact_and_names_it_by_digest(tmp_path: Path) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    artifact = run_pipeline(load_config(root / "mlci.toml"), until="evaluate").artifact
    assert artifact is not None
    store = open_store(f"oci-layout:{tmp_path / 'registry'}", "demo")
    digest = push_artifact(store, artifact).artifact_digest
    first = fetch(store, "candidate", tmp_path / "cache")
    again = fetch(store, digest, tmp_path / "cache")
    assert first == again == tmp_path / "cache" / digest.replace(":", "-")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.name]  # no scratch left behind


def test_serve_refuses_a_missing_directory_and_half_a_registry(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a directory" in result.output and "--registry" in result.output
    result = CliRunner().invoke(cli, ["serve", "production", "--registry", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "go together" in result.output
