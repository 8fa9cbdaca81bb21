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
    (root / "mlci.toml").write_text((root / "mlci.toml").read_text() + "\n[gate]\nmax = { log_loss = 0.001 }\n")
    code, out = invoke("run", "-c", cfg, "--until", "evaluate", "--json")
    artifact = json.loads(out[out.index("{") :])["artifact"]
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none", "--out", str(tmp_path / "v.json"))
    assert code == 1 and "✗ max log_loss" in out and "✗ smoke: no smoke report" in out and "gate FAILED" in out
    verdict = json.loads((tmp_path / "v.json").read_text())
    verdict["candidate"] = "sha256:" + "0" * 64
    (tmp_path / "v.json").write_text(json.dumps(verdict))
    code, out = invoke("push", artifact, "-c", cfg, "--verdict", str(tmp_path / "v.json"))
    assert code == 2 and "The verdict judges sha256:" + "0" * 64 in out and "nothing was pushed" in out, out
    assert "Gate this artifact (`mlci gate`)" in out, out
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


def _payload(out: str) -> dict:
    """The JSON document `--json` prints (CliRunner mixes in stderr: progress before it, an Error line after)."""
    return json.JSONDecoder().raw_decode(out[out.index("{\n") :])[0]


def test_a_rejected_candidate_is_reported_recorded_and_stored_untagged(tmp_path: Path) -> None:
    """Issue 13 item 1: a failed gate says so everywhere, and never moves the `candidate` tag."""
    from mlci.config import load_config
    from mlci.pipeline import open_registry
    from mlci.registry import resolve, tag_digest
    from mlci.release.promote import verdict_for

    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    cfg = str(toml)
    code, out = invoke("run", "-c", cfg, "--json")
    assert code == 0, out
    good = _payload(out)["digest"]

    # A weaker model and a policy it cannot meet: a new digest, rejected by the gate.
    toml.write_text(toml.read_text().replace("C = 1.0", "C = 0.001") + "\n[gate]\nmin = { accuracy = 0.999 }\n")
    code, out = invoke("run", "-c", cfg)
    assert code == 1, out
    assert "[mlci] gate: failed" in out and "[mlci] gate: ok" not in out, out
    assert "artifact  sha256:" in out and "metrics   accuracy=" in out and "gate      FAILED" in out, out
    assert "pushed    candidate" not in out and "stored    sha256:" in out and "rejected: not tagged candidate" in out, out
    assert "The gate failed" in out and "min accuracy" in out

    # warm: every stage from the cache, the gate still fails; stdout is the whole JSON document
    result = CliRunner().invoke(cli, ["run", "-c", cfg, "--json"], catch_exceptions=False)
    assert result.exit_code == 1 and "Error: The gate failed" in result.stderr, result.output
    payload = json.loads(result.stdout)
    bad = payload["digest"]
    assert bad != good and payload["status"] == "failed" and "min accuracy" in payload["error"]
    assert payload["verdict"]["passed"] is False and payload["verdict"]["candidate"] == bad
    assert payload["metrics"]["accuracy"] < 0.999 and Path(payload["artifact"], "model.onnx").is_file()
    gate = next(s for s in payload["stages"] if s["stage"] == "gate")
    assert gate["status"] == "failed" and gate["cache_hit"], gate
    assert "candidate" not in payload["release"]["push"]["tags"]

    store = open_registry(load_config(toml))
    assert tag_digest(store, "candidate") == good  # the candidate tag stayed where it was
    assert resolve(store, bad) is not None  # the rejected artifact is stored by digest
    assert verdict_for(store, bad)["passed"] is False  # with its verdict

    code, out = invoke("runs", "-c", cfg, "--json")
    records = json.loads(out)
    assert [r["status"] for r in records["runs"]] == ["ok", "failed", "failed"]
    assert [s["status"] for s in records["runs"][-1]["stages"] if s["stage"] == "gate"] == ["failed"]
    assert records["stats"]["gate"]["failure_rate"] == 2 / 3
    code, out = invoke("runs", "-c", cfg)
    assert "gate:failed" in out and "gate(cached):failed" in out, out

    code, out = invoke("status", "-c", cfg, "--json")
    assert code == 0 and json.loads(out)["candidate"]["digest"] == good, out
    code, out = invoke("promote", "staging", "-c", cfg, "--digest", bad, "--approve", "--no-deploy")
    assert code == 1 and "failed the gate (min accuracy)" in out, out
    assert tag_digest(store, "staging") is None


def test_the_readme_stage_by_stage_sequence_needs_no_paths(tmp_path: Path) -> None:
    """Issue 13 item 9: `mlci smoke ART` then `mlci gate ART`, as the README's release table shows them.

    Without --out, smoke writes smoke.json into the workspace under the artifact's digest and gate finds
    it there; gate writes verdict.json beside it, which `mlci push --verdict` then stores.
    """
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    cfg = str(root / "mlci.toml")
    t, e, a = (str(tmp_path / n) for n in ("t", "e", "a"))
    assert invoke("train", "-c", cfg, "--out", t)[0] == 0
    assert invoke("export", "-c", cfg, "--train", t, "--out", e)[0] == 0
    assert invoke("evaluate", "-c", cfg, "--train", t, "--export", e, "--out", a)[0] == 0
    digest = json.loads((Path(a) / "manifest.json").read_text())["digest"]

    code, out = invoke("smoke", a, "-c", cfg)
    assert code == 0 and out.startswith("smoke passed"), out
    report = root / ".mlci" / "reports" / digest.replace(":", "-") / "smoke.json"
    assert json.loads(report.read_text())["passed"] and str(report) in out

    code, out = invoke("gate", a, "-c", cfg)
    assert code == 0 and "✓ smoke" in out and "gate passed" in out, out
    verdict_file = report.parent / "verdict.json"
    assert json.loads(verdict_file.read_text())["candidate"] == digest and str(verdict_file) in out

    code, out = invoke("push", a, "-c", cfg, "--verdict", str(verdict_file), "--json")
    assert code == 0 and json.loads(out)["tags"][0] == "candidate", out
    code, out = invoke("promote", "staging", "-c", cfg, "--approve", "--no-deploy")
    assert code == 0, out


def test_gate_after_a_passing_run_finds_the_runs_smoke_report(tmp_path: Path) -> None:
    """Issue 13 item 9: `mlci gate ART` on the artifact a passing `mlci run` built uses that run's smoke report."""
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    cfg = str(root / "mlci.toml")
    code, out = invoke("run", "-c", cfg, "--json")
    assert code == 0, out
    artifact = _payload(out)["artifact"]
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none")
    assert code == 0 and "✓ smoke" in out and "gate passed" in out, out


def test_gate_refuses_a_smoke_report_of_another_artifact(tmp_path: Path) -> None:
    """A smoke.json passed with --smoke must judge the artifact being gated, and be readable."""
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    cfg = str(root / "mlci.toml")
    code, out = invoke("run", "-c", cfg, "--until", "evaluate", "--json")
    artifact = _payload(out)["artifact"]
    foreign = tmp_path / "smoke.json"
    foreign.write_text(json.dumps({"passed": True, "digest": "sha256:" + "0" * 64, "reason": "ok", "p99_ms": 1.0, "max_p99_ms": 50.0}))
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none", "--smoke", str(foreign))
    assert code == 2 and "smoke.json" in out and "sha256:0000" in out and "mlci smoke" in out, out
    foreign.write_text("{not json")
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none", "--smoke", str(foreign))
    assert code == 2 and "Cannot read the smoke report" in out and "re-run `mlci smoke`" in out, out
