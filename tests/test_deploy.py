"""Release end to end on this machine: run → push → promote → deploy (real servers), auto-rollback, hotfix, k8s."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
import yaml
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.pipeline import open_registry
from mlci.registry import push_artifact, tag_digest
from mlci.release.deploy import running, stop
from mlci.release.promote import history, store_verdict
from mlci.release.smoke import free_port

from .conftest import EXAMPLE, reseal


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    toml.write_text(toml.read_text() + f"\n[deploy]\nstaging_port = {free_port()}\nproduction_port = {free_port()}\ncheck_timeout_s = 30\n")
    yield toml
    config = load_config(toml)
    for env in ("staging", "production"):
        stop(config, env)


def ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200


def test_promote_deploys_and_a_broken_release_rolls_back_by_itself(project: Path, tmp_path: Path) -> None:
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    good = json.loads(out[out.index("{") :])["digest"]
    code, out = invoke("promote", "staging", "-c", str(project), "--json")
    assert code == 1 and "--approve" in out  # manual mode: a human must approve
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--reason", "first release", "--json")
    assert code == 0, out
    config = load_config(project)
    live = running(config, "staging")
    assert live is not None and live["digest"] == good and ready(live["url"])

    # A broken artifact that somehow passed its gate: a valid ONNX model (so `pull` takes it) that only
    # fails inside the server, whose inputs are not the schema's.
    artifact = Path(json.loads((config.workspace / "latest.json").read_text())["path"])
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, 1]) for n in ("x", "y"))
    wrong = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "wrong-inputs", [x], [y])
    (broken / "model.onnx").write_bytes(onnx.helper.make_model(wrong).SerializeToString())
    bad = reseal(broken)
    store = open_registry(config)
    push_artifact(store, broken)
    store_verdict(store, {"candidate": bad, "passed": True, "checks": []})
    code, out = invoke("promote", "staging", "-c", str(project), "--digest", bad, "--approve")
    assert code == 1
    assert "failed its post-deploy check" in out and "Rolled back automatically" in out and "is serving again" in out
    assert tag_digest(store, "staging") == good
    live = running(config, "staging")
    assert live is not None and live["digest"] == good and ready(live["url"])
    assert [e["action"] for e in history(store, "staging")] == ["promote", "promote", "rollback"]
    code, out = invoke("status", "-c", str(project), "--json")
    report = json.loads(out)
    assert report["staging"]["digest"] == good and report["staging"]["consistent"]
    assert report["staging"]["local_server"]["url"] == live["url"]


def test_rollback_command_redeploys_the_previous_version_and_hotfix_keeps_the_artifact(project: Path) -> None:
    assert invoke("run", "-c", str(project))[0] == 0
    first = tag_digest(open_registry(load_config(project)), "candidate")
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    assert invoke("promote", "production", "-c", str(project), "--approve")[0] == 0
    # A second, different model version.
    project.write_text(project.read_text().replace("C = 1.0", "C = 0.3"))
    assert invoke("run", "-c", str(project))[0] == 0
    config = load_config(project)
    store = open_registry(config)
    second = tag_digest(store, "candidate")
    assert second != first
    assert invoke("promote", "production", "-c", str(project), "--digest", str(second), "--approve")[0] == 0
    assert running(config, "production")["digest"] == second  # type: ignore[index]
    code, out = invoke("rollback", "production", "-c", str(project))
    assert code == 0, out
    live = running(config, "production")
    assert live is not None and live["digest"] == first and ready(live["url"])
    pid = live["pid"]
    code, out = invoke("hotfix", "production", "-c", str(project), "--reason", "serving fix", "--json")
    assert code == 0, out
    after = running(config, "production")
    assert after is not None and after["digest"] == first and after["pid"] != pid
    assert history(store, "production")[-1]["action"] == "hotfix"


def test_continuous_deployment_promotes_a_passing_candidate_through_both_environments(project: Path) -> None:
    project.write_text(project.read_text().replace("[deploy]\n", "[deploy]\ncontinuous_deployment = true\n"))
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    payload = json.loads(out[out.index("{") :])
    stages = [s["stage"] for s in payload["stages"]]
    assert stages[-4:] == ["promote-staging", "deploy-staging", "promote-production", "deploy-production"]
    config = load_config(project)
    for env in ("staging", "production"):
        live = running(config, env)
        assert live is not None and live["digest"] == payload["digest"] and ready(live["url"])
        assert history(open_registry(config), env)[-1]["why"].startswith("continuous deployment")


def test_failing_gate_pushes_the_verdict_but_never_promotes(project: Path) -> None:
    project.write_text(
        project.read_text().replace("[deploy]\n", "[deploy]\ncontinuous_deployment = true\n") + "\n[gate]\nmin = { accuracy = 0.999 }\n"
    )
    code, out = invoke("run", "-c", str(project))
    assert code == 1 and "The gate failed" in out and "min accuracy" in out
    config = load_config(project)
    store = open_registry(config)
    assert tag_digest(store, "candidate") is not None
    assert tag_digest(store, "staging") is None and tag_digest(store, "production") is None
    code, out = invoke("promote", "staging", "-c", str(project), "--approve")
    assert code == 1 and "failed the gate (min accuracy)" in out


def test_kubernetes_target_renders_manifests_naming_the_digest(project: Path) -> None:
    project.write_text(project.read_text().replace("[deploy]\n", '[deploy]\ntarget = "kubernetes"\nimage = "ghcr.io/acme/mlci:1.0"\n'))
    assert invoke("run", "-c", str(project))[0] == 0
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--json")
    assert code == 0, out
    deployed = json.loads(out)["deployed"]
    docs = list(yaml.safe_load_all(Path(deployed["manifest"]).read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert docs[0]["metadata"]["annotations"]["mlci.dev/digest"] == deployed["digest"]
    pull = docs[0]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert pull[:3] == ["mlci", "pull", deployed["digest"]] and pull[pull.index("--repository") + 1] == "breast-cancer"
    assert deployed["applied_to"] is None  # no kubectl context here: render only
    project.write_text(project.read_text().replace('target = "kubernetes"', 'target = "kubernetes"\nkind = "inferenceservice"'))
    code, out = invoke("deploy", "staging", "-c", str(project), "--json")
    assert code == 0, out
    (isvc,) = yaml.safe_load_all(Path(json.loads(out)["manifest"]).read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
