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
    (root / "mlci.toml").write_text((root / "mlci.toml").read_text() + "\n[gate]\nmax = { log_loss = 0.001 }\n")
    code, out = invoke("run", "-c", cfg, "--until", "evaluate", "--json")
    artifact = json.loads(out[out.index("{") :])["artifact"]
    code, out = invoke("gate", artifact, "-c", cfg, "--production", "none", "--out", str(tmp_path / "v.json"))
    assert code == 1 and "✗ max log_loss" in out and "✗ smoke: no smoke report" in out and "gate FAILED" in out
    verdict = json.loads((tmp_path / "v.json").read_text())
    verdict["candidate"] = "sha256:" + "0" * 64
    (tmp_path / "v.json").write_text(json.dumps(verdict))
    code, out = invoke("push", artifact, "-c", cfg, "--verdict", str(tmp_path / "v.json"))
    assert code == 2 and "not the pushed" in out and "nothing was pushed" in out
    assert not (root / ".mlci" / "registry").exists()
