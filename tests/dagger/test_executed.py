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
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import dagger
import pytest
from dagger.mod._exceptions import FunctionError

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


def example_copy(dest: Path, *extra_ignores: str) -> Path:
    """The bundled example copied to ``dest`` (its local workspace left out): a model repository of its own."""
    shutil.copytree(
        REPO / "examples" / "breast_cancer", dest, ignore=shutil.ignore_patterns(".mlci", *extra_ignores)
    )
    return dest


def mlci_ok(*args: str, cwd: Path) -> str:
    """Run this machine's mlci CLI; its stdout, or the test fails with its stderr."""
    done = subprocess.run([str(MLCI), *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"mlci {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def local_digest(tmp_path: Path) -> str:
    """The artifact digest `mlci run` gives on this commit, in a copy of the bundled example."""
    src = example_copy(tmp_path / "local")
    out = mlci_ok("run", "--until", "evaluate", "--json", cwd=src)
    return json.loads((Path(json.loads(out)["artifact"]) / "manifest.json").read_text())["digest"]


def test_train_gives_the_digest_mlci_run_gives(xcall: Caller, executed: Any, tmp_path: Path) -> None:
    """`dagger call train` builds the artifact in the containers; its digest is `mlci run`'s on this commit."""
    out = export_dir(xcall("train", ctor_args={"config": CONFIG}), tmp_path / "artifact")
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) >= ["manifest.json", "model.onnx"]
    assert manifest["digest"] == local_digest(tmp_path)


def test_smoke_sends_holdout_rows_to_the_serving_image_as_a_service(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """`dagger call smoke`: the serving image started as a service in its own network namespace, reached
    by its alias from the client container, real holdout rows compared with in-process predictions."""
    smoke = json.loads(file_contents(xcall("smoke", ctor_args={"config": CONFIG})))
    assert smoke["passed"] is True, smoke
    assert any(e.get("argv", [])[:2] == ["mlci", "smoke"] for e in executed.log)


@pytest.fixture(scope="module")
def host_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Debian's docker-registry on 127.0.0.1 (tests/registry/conftest.py), for images pulled back here."""
    from tests.registry.conftest import new_registry

    reg = new_registry(tmp_path_factory.mktemp("executed-registry")).start()
    yield reg
    reg.stop()


def test_published_serving_image_answers_tritonclient_and_feeds_the_monitor(
    xcall: Caller, executed: Any, host_registry: Any, tmp_path: Path
) -> None:
    """The serving and monitor images as `publish` builds them, pushed as real OCI images, pulled back by
    address, run in the sandbox: tritonclient infers through the served image, and the monitor image reads
    the prediction log the serving container wrote on a shared volume (cmd.PREDICTIONS in both)."""
    import numpy as np
    import tritonclient.http as triton
    from dagger import dag

    artifact = xcall("train", ctor_args={"config": CONFIG})
    host = f"127.0.0.1:{host_registry.port}"
    executed.registries[host] = host
    serving = load(dagger.Container, xcall("serving_image", ctor_args={"config": CONFIG}, artifact=artifact))
    monitor = load(dagger.Container, xcall("monitor_image", ctor_args={"config": CONFIG}, artifact=artifact))
    log = dag.cache_volume(f"predictions-{uuid.uuid4().hex}")  # a fresh log: nothing from an earlier run

    async def publish() -> tuple[str, str]:
        return (
            await serving.publish(f"{host}/acme/bc-serving:executed"),
            await monitor.publish(f"{host}/acme/bc-serving-monitor:executed"),
        )

    serving_ref, monitor_ref = anyio.run(publish)
    assert serving_ref.startswith(f"{host}/acme/bc-serving:executed@sha256:")

    pulled = (
        dag.container()
        .from_(serving_ref.replace(":executed@", "@"))
        .with_mounted_cache("/var/lib/mlci/predictions", log)
    )
    service = executed.obj_of(pulled.as_service(use_entrypoint=True))
    rows = [dict(r) for r in _holdout_rows(8)]
    with executed.started(service) as ip, triton.InferenceServerClient(f"{ip}:8080") as tc:
        # The engine calls a service healthy once its port accepts (core/healthcheck.go); the server
        # answers live at once and ready only after its warm-up inference (serving/app.py), so a client
        # polls ready the way a Kubernetes readiness probe does.
        deadline = time.monotonic() + 60
        while not tc.is_server_ready():
            assert time.monotonic() < deadline, "the served image never turned ready within 60 s"
            time.sleep(0.1)
        assert tc.is_model_ready("breast-cancer")
        inputs = []
        for name in rows[0]:
            tensor = triton.InferInput(name, [len(rows), 1], "FP32")
            tensor.set_data_from_numpy(np.array([[r[name]] for r in rows], dtype=np.float32))
            inputs.append(tensor)
        labels = tc.infer("breast-cancer", inputs).as_numpy("label")
        assert len(labels) == len(rows)

    watcher = (
        dag.container().from_(monitor_ref.replace(":executed@", "@"))
        .with_mounted_cache("/var/lib/mlci/predictions", log)
        .with_exec(["--cycles", "1", "--json"], use_entrypoint=True, expect=dagger.ReturnType.ANY)
    )  # fmt: skip

    async def watch() -> tuple[int, str, str]:
        return await watcher.exit_code(), await watcher.stdout(), await watcher.stderr()

    code, out, err = anyio.run(watch)
    assert code == 0, err
    report = json.loads(out)
    report = report[-1] if isinstance(report, list) else report
    manifest = json.loads(anyio.run(load(dagger.Directory, artifact).file("manifest.json").contents))
    # every row the served image logged reached the monitor image, for this artifact, none unreadable
    assert (report["rows"], report["digest"], report["bad_lines"], report["skipped_other_model"]) == (
        len(rows),
        manifest["digest"],
        0,
        0,
    ), report


def _holdout_rows(n: int) -> list[dict[str, float]]:
    import csv

    with open(REPO / "examples" / "breast_cancer" / "data.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [
            {k: float(v) for k, v in r.items() if k != "target"}
            for _, r in zip(range(n), reader, strict=False)
        ]
    return rows


def registry_source(tmp_path: Path) -> Path:
    """The bundled example as its own repository, its [registry] a registry service at registry:5000."""
    src = tmp_path / "model-repo"
    example_copy(src, "prepare.py")
    toml = (src / "mlci.toml").read_text()
    (src / "mlci.toml").write_text(
        toml + '\n[registry]\nurl = "http://registry:5000"\nrepository = "acme/bc"\n'
    )
    return src


def registry_service(key: str) -> str:
    """registry:2 (Debian's docker-registry standing in) as a service, its storage on a cache volume."""
    from dagger import dag

    svc = (
        dag.container().from_("registry:2")
        .with_mounted_cache("/var/lib/registry", dag.cache_volume(key))
        .with_exposed_port(5000)
        .as_service(use_entrypoint=True)
    )  # fmt: skip
    return anyio.run(svc.id)


def test_pipeline_publishes_to_a_registry_service_end_to_end(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """`dagger call pipeline --registry=registry:5000 --registry-service=… --keep-going`: train, smoke, a
    gate that reads the registry service, the artifact pushed there by `mlci push`, the serving and monitor
    images published to it; every report exported; read back from the service's storage afterwards."""
    import httpx

    from .executor.rootfs import cache_root

    key = f"registry-{tmp_path.name}"
    src = registry_source(tmp_path)
    out = export_dir(
        xcall(
            "pipeline", source=src, checks=False, registry="registry:5000", repository="acme/bc-serving",
            registry_service=registry_service(key), keep_going=True,
        ),
        tmp_path / "mlci-out",
    )  # fmt: skip
    status = json.loads((out / "pipeline.json").read_text())
    assert status["ok"] is True, status
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passed"] is True and verdict["first_run"] is True
    published = json.loads((out / "published.json").read_text())
    assert published["serving_image"].startswith("registry:5000/acme/bc-serving:candidate@sha256:")
    assert published["monitor_image"].startswith("registry:5000/acme/bc-serving-monitor:candidate@sha256:")
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())

    storage = cache_root() / "volumes" / key
    from tests.registry.conftest import Registry, free_port

    (tmp_path / "readback").mkdir()
    (tmp_path / "readback" / "storage").symlink_to(storage)  # the service's own storage, served on 127.0.0.1
    reg = Registry(tmp_path / "readback", free_port()).start()
    try:
        for repo, tag in (
            ("acme/bc-serving", "candidate"),
            ("acme/bc-serving-monitor", "candidate"),
            ("acme/bc", "candidate"),
        ):
            tags = httpx.get(f"{reg.url}/v2/{repo}/tags/list", timeout=10).json()["tags"]
            assert tag in tags, (repo, tags)
        digest = published["serving_image"].rsplit("@", 1)[1]
        head = httpx.head(
            f"{reg.url}/v2/acme/bc-serving/manifests/{digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
        )  # fmt: skip
        assert head.status_code == 200
        mlci_ok(
            "pull",
            "candidate",
            "--registry",
            reg.url,
            "--repository",
            "acme/bc",
            "--out",
            str(tmp_path / "pulled"),
            cwd=tmp_path,
        )
        assert json.loads((tmp_path / "pulled" / "manifest.json").read_text())["digest"] == manifest["digest"]
    finally:
        reg.stop()


def test_dagger_check_checks_pass_on_this_repository(xcall: Caller, executed: Any) -> None:
    """What `dagger check` runs with no flags (cmd/dagger/checks.go: the @check functions, constructor
    defaults): lint, smoke and gate on this repository's root mlci.toml. `test` runs on a small repository
    below (the whole suite inside the sandbox would take as long as `make test`)."""
    assert anyio.run(load(dagger.Container, xcall("lint")).exit_code) == 0
    assert json.loads(file_contents(xcall("smoke")))["passed"] is True
    verdict = json.loads(file_contents(xcall("gate")))
    assert verdict["passed"] is True


def test_the_test_check_on_a_repository_without_a_pyproject(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """`test` on a model repository with tests but no pyproject.toml: pytest runs, the JUnit report comes back;
    a failing test fails the check."""
    repo = tmp_path / "plain"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    junit = file_contents(xcall("test", source=repo, system_packages=[]))
    assert 'tests="1"' in junit and 'failures="0"' in junit, junit
    (repo / "tests" / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    with pytest.raises(Exception, match="test"):
        xcall("test", source=repo, system_packages=[])


@pytest.mark.parametrize("vendor_file, scenario", [
    (".github/workflows/mlci.yml", "pull-request"),
    (".github/workflows/mlci.yml", "push-main-unconfigured"),
    (".gitlab-ci.yml", "push-main-unconfigured"),
])  # fmt: skip
def test_mlci_init_ci_calls_run_in_a_user_repository(
    xcall: Caller, executed: Any, registered: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    vendor_file: str, scenario: str,
) -> None:  # fmt: skip
    """The CI `mlci init` writes into a model repository (no pyproject: checks off), its shell run for the
    scenario by tests/dagger/ci_calls.py, and every `dagger call` it makes run here against the module:
    gate-report's Markdown comes back, pipeline --keep-going exports pipeline.json {"ok": true}, junit-free."""
    from .ci_calls import PASSWORD, dagger_calls
    from .dagger_cli import run_call

    repo = tmp_path / "churn"
    repo.mkdir()
    shutil.copy(REPO / "examples" / "breast_cancer" / "data.csv", repo / "data.csv")
    mlci_ok("init", "data.csv", "--target", "target", cwd=repo)
    calls = dagger_calls(repo / vendor_file, scenario)
    assert calls and all(c[0] == "call" for c in calls)
    monkeypatch.setenv("MLCI_REGISTRY_PASSWORD", PASSWORD)
    _, functions, ctor = registered
    for argv in calls:
        result = run_call(argv, cwd=repo, functions=functions, ctor=ctor, repo=REPO)
        assert result.module.startswith("github.com/") and "@v" in result.module  # pinned, remote
        if result.function == "gate_report":
            assert "gate" in result.value.lower()
        if result.function == "pipeline":
            status = json.loads((repo / "mlci-out" / "pipeline.json").read_text())
            assert status["ok"] is True, status
            assert (repo / "mlci-out" / "verdict.json").exists() and (
                repo / "mlci-out" / "artifact" / "manifest.json"
            ).exists()
            assert not (
                repo / "mlci-out" / "junit.xml"
            ).exists()  # checks are off in a repository without a pyproject


def test_nested_local_state_never_reaches_the_containers(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """Ignore at every depth (internal/fsutil/filter.go patterns are root-anchored, so `**/` is needed):
    a laptop's nested workspaces, venvs and build output stay out of /src; the model's files go in."""
    src = tmp_path / "repo"
    example_copy(src / "examples" / "bc")
    shutil.copy(REPO / "mlci.toml", src / "mlci.toml")
    for junk in ("examples/bc/.mlci/registry/index.json", "ci/.venv/bin/python", "ci/sdk/pyproject.toml",
                 "pkg.egg-info/PKG-INFO", "sub/__pycache__/x.pyc", ".git/HEAD"):  # fmt: skip
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("local state\n")
    base = load(dagger.Container, xcall("base", source=src))
    paths = set(anyio.run(base.with_exec(["find", "/src"]).stdout).split())
    assert {"/src/mlci.toml", "/src/examples/bc/mlci.toml", "/src/examples/bc/data.csv"} <= paths
    leaked = sorted(
        p
        for p in paths
        if any(part in p for part in (".mlci", ".venv", "ci/sdk", "egg-info", "__pycache__", ".git"))
    )
    assert leaked == []


def test_release_with_a_local_layout_registry_is_refused_before_anything_runs(
    xcall: Caller, executed: Any
) -> None:
    """The default [registry] (an OCI layout in /src) would be written into one container and discarded:
    publish refuses it, saying what to set, before any container runs."""
    before = len(executed.log)
    with pytest.raises(FunctionError, match=r"local OCI layout.*set \[registry\] url") as info:
        xcall("publish", registry="registry:5000", repository="acme/bc-serving")
    assert isinstance(info.value.__cause__, ValueError)
    assert len(executed.log) == before


def test_an_unreachable_registry_is_an_error_not_a_rejected_gate(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """mlci gate exits 1 for a rejection and for a registry it cannot reach; only a verdict saying
    passed=false is a rejection (the module reads verdict.json), anything else is the error it is."""
    from mlci_dagger import GateFailed, StageFailed

    with pytest.raises(FunctionError) as info:
        xcall(
            "gate", source=registry_source(tmp_path)
        )  # [registry] url = http://registry:5000, no service bound
    cause = info.value.__cause__
    assert isinstance(cause, StageFailed) and not isinstance(cause, GateFailed)
    assert "without a verdict" in str(cause) and "Cannot reach the registry" in str(cause)


def test_keep_going_exports_the_verdict_of_a_failed_gate(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """A gate that fails (a log-loss ceiling the model cannot reach) with --keep-going: pipeline.json says
    ok=false and names the gate, verdict.json and verdict.md are exported; without it the call fails."""
    from mlci_dagger import GateFailed

    src = example_copy(tmp_path / "strict")
    with (src / "mlci.toml").open("a") as fh:
        fh.write("\n[gate]\nmax = { log_loss = 0.001 }\n")
    out = export_dir(xcall("pipeline", source=src, checks=False, keep_going=True), tmp_path / "out")
    status = json.loads((out / "pipeline.json").read_text())
    assert status["ok"] is False and status["stages"]["gate"]["ok"] is False, status
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passed"] is False
    assert any(
        c["name"] == "max log_loss" for c in verdict["checks"] if not c["passed"]
    )
    assert (out / "verdict.md").read_text().strip()
    with pytest.raises(FunctionError) as info:
        xcall("pipeline", source=src, checks=False)
    assert isinstance(info.value.__cause__, GateFailed)


def test_the_test_check_installs_the_debian_packages_the_suite_starts(
    xcall: Caller, executed: Any, tmp_path: Path
) -> None:
    """`test` with its default system packages: apt-get installs docker-registry, skopeo, git and qemu-user in the
    stand-in python image (whose docker-clean hook the module removes), and a suite that starts
    docker-registry passes."""
    repo = tmp_path / "needs-registry"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_registry.py").write_text(
        "import shutil, subprocess\n\n"
        "def test_registry_binary():\n"
        "    assert shutil.which('docker-registry') and shutil.which('skopeo') and shutil.which('git')\n"
        "    assert shutil.which('qemu-x86_64')\n"
        "    assert subprocess.run(['skopeo', '--version'], capture_output=True, text=True).returncode == 0\n"
    )
    junit = file_contents(xcall("test", source=repo))
    assert 'tests="1"' in junit and 'failures="0"' in junit and 'errors="0"' in junit, junit
