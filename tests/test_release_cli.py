"""The release commands one by one, as a CI job would call them: smoke, gate, push, pull."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from mlci.cli import cli

from .conftest import EXAMPLE


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

