"""The release commands one by one, as a CI job would call them: smoke, gate, push, pull."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mlci.cli import cli

from .conftest import EXAMPLE, REPO


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_stage_by_stage_release(tmp_path: Path) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    cfg = str(root / "mlci.toml")
    code, out = invoke("run", "-c", cfg, "--until", "evaluate", "--json")
    assert code == 0, out
    artifact = json.loads(out[out.index("{") :])["artifact"]

    code, out = invoke("smoke", artifact, "-c", cfg, "--out", str(tmp_path / "smoke.json"))
    assert code == 0 and out.startswith("smoke passed"), out
    code, out = invoke("gate", artifact, "-c", cfg, "--smoke", str(tmp_path / "smoke.json"), "--out", str(tmp_path / "verdict.json"), "--format", "markdown")
    assert code == 0 and "✅ **mlci gate passed**" in out and "first release" in out, out

    code, out = invoke("push", artifact, "-c", cfg, "--verdict", str(tmp_path / "verdict.json"), "--json")
    assert code == 0, out
    pushed = json.loads(out)
    assert pushed["tags"][0] == "candidate" and pushed["tags"][1].startswith("sha256-")

    registry = str(root / ".mlci" / "registry")
    code, out = invoke("pull", pushed["artifact_digest"], "--registry", registry, "--repository", "breast-cancer", "--out", str(tmp_path / "pulled"))
    assert code == 0, out
    assert (tmp_path / "pulled" / "model.onnx").read_bytes() == (Path(artifact) / "model.onnx").read_bytes()
    code, out = invoke("verify", str(tmp_path / "pulled"))
    assert code == 0 and pushed["artifact_digest"] in out


def test_gate_failure_exits_1_and_a_foreign_verdict_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    cfg = str(root / "mlci.toml")
    (root / "mlci.toml").write_text((root / "mlci.toml").read_text() + "\n[gate]\nmin = { roc_auc = 0.9999 }\n")
    code, out = invoke("run", "-c", cfg, "--until", "evaluate", "--json")
    artifact = json.loads(out[out.index("{") :])["artifact"]
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none", "--out", str(tmp_path / "v.json"))
    assert code == 1 and "✗ min roc_auc" in out and "✗ smoke: no smoke report" in out and "gate FAILED" in out
    verdict = json.loads((tmp_path / "v.json").read_text())
    verdict["candidate"] = "sha256:" + "0" * 64
    (tmp_path / "v.json").write_text(json.dumps(verdict))
    code, out = invoke("push", artifact, "-c", cfg, "--verdict", str(tmp_path / "v.json"))
    assert code == 2 and "not the pushed" in out and "nothing was pushed" in out
    assert not (root / ".mlci" / "registry").exists()


def test_environment_probe() -> None:
    """What every test sees (tests/conftest.py's autouse fixture): a KUBECONFIG that names no file, so no
    kubectl can reach a cluster from the suite, and no MLCI_* variable but the test infrastructure's.
    PROBE_KEEP (set by the test below) names infrastructure variables that must have survived."""
    from tests.conftest import is_test_infrastructure

    assert "KUBECONFIG" in os.environ and not Path(os.environ["KUBECONFIG"]).exists()
    assert [n for n in os.environ if n.startswith("MLCI_") and not is_test_infrastructure(n)] == []
    for name in filter(None, os.environ.get("PROBE_KEEP", "").split(",")):
        assert os.environ.get(name) == "kept", name


def test_the_suite_never_reaches_a_cluster_nor_reads_product_settings(tmp_path: Path) -> None:
    """Run the probe in a pytest of its own whose caller has a kubeconfig and product MLCI_* settings."""
    kube = tmp_path / "kubeconfig"
    kube.write_text("apiVersion: v1\nkind: Config\ncurrent-context: prod\n")
    keep = ["MLCI_TEST_CACHE", "MLCI_EXECUTOR_NETNS_LOCK", "MLCI_KSERVE_PYTHON"]
    env = {
        **os.environ, "KUBECONFIG": str(kube), "MLCI_ACTOR": "intruder", "MLCI_REGISTRY_PASSWORD": "x",
        "MLCI_SERVE_PORT": "1", "MLCI_CACHE_DIR": str(tmp_path), "PROBE_KEEP": ",".join(keep),
        **dict.fromkeys(keep, "kept"),
    }  # fmt: skip
    probe = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_environment_probe"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout[-3000:]
