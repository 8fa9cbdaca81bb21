"""End to end with a real Dagger engine: `dagger call` lint, test, train, smoke, gate, publish.

Runs only where the dagger CLI and a container engine exist (marker `dagger`); elsewhere every test
here is skipped with the reason. The train test is the "identical on laptop and CI" claim: the artifact
digest from the containers must equal the one `mlci run` produces locally from the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import REPO
from .replay import MLCI

EXAMPLE = REPO / "examples" / "breast_cancer"
CONFIG = "examples/breast_cancer/mlci.toml"


def _engine_reason() -> str | None:
    if shutil.which("dagger") is None:
        return "no dagger CLI on PATH (install v0.21.x: https://docs.dagger.io/install)"
    if os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST"):
        return None
    for tool in ("docker", "podman", "nerdctl"):
        if shutil.which(tool) and subprocess.run([tool, "info"], capture_output=True, check=False).returncode == 0:
            return None
    return "no container engine answering (docker/podman/nerdctl info failed) and no _EXPERIMENTAL_DAGGER_RUNNER_HOST"


REASON = _engine_reason()
pytestmark = [pytest.mark.dagger, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def dagger(*args: str, cwd: Path = REPO, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["dagger", "--progress=plain", "call", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"dagger call {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done


def local_digest(tmp: Path) -> str:
    ref = tmp / "local"
    shutil.copytree(EXAMPLE, ref, ignore=shutil.ignore_patterns(".mlci"))
    done = subprocess.run([str(MLCI), "run", "--until", "evaluate", "--json"], cwd=ref, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["digest"]


def test_lint() -> None:
    dagger("lint")


def test_test_returns_a_junit_report(tmp_path: Path) -> None:
    dagger("test", "export", f"--path={tmp_path / 'junit.xml'}")
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures", "1")) == 0 and int(suite.get("errors", "1")) == 0


def test_train_in_containers_gives_the_local_digest(tmp_path: Path) -> None:
    dagger(f"--config={CONFIG}", "train", "export", f"--path={tmp_path / 'artifact'}")
    digest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())["digest"]
    assert digest == local_digest(tmp_path)


def test_smoke_and_gate(tmp_path: Path) -> None:
    dagger(f"--config={CONFIG}", "smoke", "export", f"--path={tmp_path / 'smoke.json'}")
    assert json.loads((tmp_path / "smoke.json").read_text())["passed"] is True
    dagger(f"--config={CONFIG}", "gate", "--production=none", "export", f"--path={tmp_path / 'verdict.json'}")
    assert json.loads((tmp_path / "verdict.json").read_text())["passed"] is True


@pytest.fixture
def registry() -> Iterator[int]:
    """A registry:2 container on a free local port (docker only)."""
    if shutil.which("docker") is None:
        pytest.skip("publish needs docker to run registry:2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cid = subprocess.run(["docker", "run", "-d", "-p", f"127.0.0.1:{port}:5000", "registry:2"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def test_publish_pushes_artifact_and_image_to_a_registry2_service(tmp_path: Path, registry: int) -> None:
    source = tmp_path / "model"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(".mlci"))
    with (source / "mlci.toml").open("a") as fh:
        fh.write('\n[registry]\nurl = "http://registry:5000"\nrepository = "e2e/breast-cancer"\n')
    done = dagger(
        "-m", str(REPO), f"--source={source}", "publish", "--registry=registry:5000",
        "--repository=e2e/breast-cancer-serving", f"--registry-service=tcp://127.0.0.1:{registry}",
        cwd=tmp_path,
    )  # fmt: skip
    refs = json.loads(done.stdout)
    assert refs["serving_image"].startswith("registry:5000/e2e/breast-cancer-serving:candidate@sha256:")
    pulled = tmp_path / "pulled"
    subprocess.run(
        [str(MLCI), "pull", "candidate", "--registry", f"http://127.0.0.1:{registry}", "--repository", "e2e/breast-cancer", "--out", str(pulled)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert json.loads((pulled / "manifest.json").read_text())["digest"] == refs["artifact"]["artifact_digest"]
    tags = httpx.get(f"http://127.0.0.1:{registry}/v2/e2e/breast-cancer-serving/tags/list").json()["tags"]
    assert "candidate" in tags
