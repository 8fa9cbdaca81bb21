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
        if (
            shutil.which(tool)
            and subprocess.run([tool, "info"], capture_output=True, check=False).returncode == 0
        ):
            return None
    return "no container engine answering (docker/podman/nerdctl info failed) and no _EXPERIMENTAL_DAGGER_RUNNER_HOST"


REASON = _engine_reason()
pytestmark = [pytest.mark.dagger, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def dagger(*args: str, cwd: Path = REPO, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["dagger", "--progress=plain", "call", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"dagger call {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    )
    return done


def local_digest(tmp: Path) -> str:
    ref = tmp / "local"
    shutil.copytree(EXAMPLE, ref, ignore=shutil.ignore_patterns(".mlci"))
    done = subprocess.run(
        [str(MLCI), "run", "--until", "evaluate", "--json"],
        cwd=ref,
        capture_output=True,
        text=True,
        check=True,
    )
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
    cid = subprocess.run(
        ["docker", "run", "-d", "-p", f"127.0.0.1:{port}:5000", "registry:2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
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


# -- what the executor runs here, on a real engine (issue 12) --------------------------------------------


def test_the_module_loads_and_lists_its_functions() -> None:
    """The runtime's install (uv lock + uv sync, SDK 0.0.0) and registration on a real engine."""
    done = subprocess.run(
        ["dagger", "functions"], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for name in (
        "train",
        "smoke",
        "gate",
        "gate-report",
        "publish",
        "pipeline",
        "serving-image",
        "monitor-image",
    ):
        assert name in done.stdout


def test_dagger_check_passes_with_no_flags() -> None:
    """`dagger check`: lint, test, smoke and gate with the constructor defaults (the root mlci.toml)."""
    done = subprocess.run(
        ["dagger", "--progress=plain", "check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_keep_going_exports_a_failed_gates_verdict(tmp_path: Path) -> None:
    source = tmp_path / "strict"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(".mlci"))
    with (source / "mlci.toml").open("a") as fh:
        fh.write("\n[gate]\nmax = { log_loss = 0.001 }\n")  # a floor no model reaches
    dagger("-m", str(REPO), f"--source={source}", "pipeline", "--checks=false", "--keep-going",
           "export", f"--path={tmp_path / 'out'}", cwd=tmp_path)  # fmt: skip
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text())["ok"] is False
    assert json.loads((tmp_path / "out" / "verdict.json").read_text())["passed"] is False


def test_published_serving_image_runs_and_answers_tritonclient(tmp_path: Path, registry: int) -> None:
    """The image `publish` pushed, pulled by docker from the registry and run; a V2 client infers through it."""
    import tritonclient.http as triton

    source = tmp_path / "model"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(".mlci"))
    with (source / "mlci.toml").open("a") as fh:
        fh.write('\n[registry]\nurl = "http://registry:5000"\nrepository = "e2e/bc"\n')
    refs = json.loads(dagger(
        "-m", str(REPO), f"--source={source}", "publish", "--registry=registry:5000", "--repository=e2e/bc-serving",
        f"--registry-service=tcp://127.0.0.1:{registry}", cwd=tmp_path,
    ).stdout)  # fmt: skip
    image = (
        refs["serving_image"].replace("registry:5000", f"127.0.0.1:{registry}").replace(":candidate@", "@")
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cid = subprocess.run(
        ["docker", "run", "-d", "-p", f"127.0.0.1:{port}:8080", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the published serving image never became ready"
            time.sleep(0.5)
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as tc:
            assert tc.is_model_ready("breast-cancer")
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def test_mlci_init_ci_calls_run_in_a_user_repository(tmp_path: Path) -> None:
    """The calls the generated GitHub workflow makes on a push, with -m pointing at this checkout (the
    pinned release address only resolves once the release is tagged)."""
    from .ci_calls import dagger_calls

    repo = tmp_path / "churn"
    repo.mkdir()
    shutil.copy(EXAMPLE / "data.csv", repo / "data.csv")
    subprocess.run(
        [str(MLCI), "init", "data.csv", "--target", "target"], cwd=repo, check=True, capture_output=True
    )
    for argv in dagger_calls(repo / ".github" / "workflows" / "mlci.yml", "push-main-unconfigured"):
        argv = [str(REPO) if i > 0 and argv[i - 1] == "-m" else a for i, a in enumerate(argv)]
        dagger(*argv[1:], cwd=repo)
    assert json.loads((repo / "mlci-out" / "pipeline.json").read_text())["ok"] is True
