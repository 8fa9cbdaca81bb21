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
    log = dag.cache_volume(f"predictions-{tmp_path.name}")

    async def publish() -> tuple[str, str]:
        return (
            await serving.publish(f"{host}/acme/bc-serving:executed"),
            await monitor.publish(f"{host}/acme/bc-serving-monitor:executed"),
        )

    serving_ref, monitor_ref = anyio.run(publish)
    assert serving_ref.startswith(f"{host}/acme/bc-serving:executed@sha256:")

    pulled = dag.container().from_(serving_ref.replace(":executed@", "@")).with_mounted_cache("/var/lib/mlci/predictions", log)
    service = executed.obj_of(pulled.as_service(use_entrypoint=True))
    rows = [dict(r) for r in _holdout_rows(8)]
    with executed.started(service) as ip, triton.InferenceServerClient(f"{ip}:8080") as tc:
        assert tc.is_server_ready() and tc.is_model_ready("breast-cancer")
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
        len(rows), manifest["digest"], 0, 0,
    ), report


def _holdout_rows(n: int) -> list[dict[str, float]]:
    import csv

    with open(REPO / "examples" / "breast_cancer" / "data.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: float(v) for k, v in r.items() if k != "target"} for _, r in zip(range(n), reader, strict=False)]
    return rows
