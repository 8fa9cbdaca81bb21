"""What the digest names: the deployed bytes and the facts that define them, not the measurements.

Two evaluations of one model that differ only in a measurement (a parity figure's last bit, as two CPUs
give it: issue 14 saw ``max_abs_diff`` 2.2e-16 on one and 3.3e-16 on another; latency always differs)
must give one identity digest. The measurements stay in the artifact as its evidence, sealed to that
identity, and `mlci verify` reports a tampered or transplanted evidence block apart from a tampered model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.errors import DataError
from mlci.model.artifact import EvidenceError, evidence_of, verify_artifact
from mlci.stages import evaluate_stage, export_stage, train_stage

from .conftest import reseal


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled example trained and exported once; evaluated twice, the second time on a parity
    report whose ``max_abs_diff`` differs in the last bits (what another CPU's kernels measure)."""
    from .conftest import EXAMPLE

    root = tmp_path_factory.mktemp("identity")
    project = root / "breast_cancer"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".mlci"))
    config = load_config(project / "mlci.toml", root / "ws")
    dirs = {name: root / name for name in ("train", "export", "export_other_cpu", "a", "b")}
    train_stage(config, {}, dirs["train"])
    export_stage(config, {"train": dirs["train"]}, dirs["export"])
    shutil.copytree(dirs["export"], dirs["export_other_cpu"])
    parity_path = dirs["export_other_cpu"] / "parity.json"
    parity = json.loads(parity_path.read_text())
    parity["max_abs_diff"] = parity["max_abs_diff"] + 1.1e-16  # one more ulp-sized step of float64 noise
    parity_path.write_text(json.dumps(parity))
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export"]}, dirs["a"])
    evaluate_stage(config, {"train": dirs["train"], "export": dirs["export_other_cpu"]}, dirs["b"])
    return dirs


def manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def copy(artifact: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact, target)
    return target


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_a_measurement_that_differs_in_its_last_bit_keeps_the_identity(stages: dict[str, Path]) -> None:
    a, b = manifest(stages["a"]), manifest(stages["b"])
    assert evidence_of(a)["parity"]["max_abs_diff"] != evidence_of(b)["parity"]["max_abs_diff"]
    for name in ("model.onnx", "outlier.onnx", "profile.json"):
        assert (stages["a"] / name).read_bytes() == (stages["b"] / name).read_bytes(), name
    assert a["digest"] == b["digest"]
    assert a["evidence_digest"] != b["evidence_digest"]  # the evidence differs, and says so
    assert verify_artifact(stages["a"])["digest"] == verify_artifact(stages["b"])["digest"]


def test_metrics_parity_and_latency_are_evidence_not_identity(stages: dict[str, Path]) -> None:
    a = manifest(stages["a"])
    assert {"metrics", "parity", "latency_ms", "outlier"} <= set(a["evidence"])
    assert "metrics" not in a and "parity" not in a and "latency_ms" not in a["runtime"]
    profile = json.loads((stages["a"] / "profile.json").read_text())
    assert "baseline_metrics" not in profile and "holdout_outlier_rate" not in profile["outlier"]
    assert isinstance(profile["outlier"]["score_threshold"], float) and math.isfinite(profile["outlier"]["score_threshold"])
    assert a["evidence"]["outlier"]["holdout_outlier_rate"] >= 0
    assert a["evidence"]["metrics"]["accuracy"] > 0.9 and a["evidence"]["parity"]["passed"] is True


def test_a_changed_model_byte_changes_the_identity(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    flip_last_byte(artifact / "model.onnx")
    assert reseal(artifact) != manifest(stages["a"])["digest"]


def test_verify_reports_identity_and_evidence(stages: dict[str, Path]) -> None:
    code, out = invoke("verify", str(stages["a"]))
    a = manifest(stages["a"])
    assert code == 0, out
    assert f"identity ok  {a['digest']}" in out and f"evidence ok  {a['evidence_digest']}" in out
    code, out = invoke("verify", str(stages["a"]), "--json")
    payload = json.loads(out)
    assert payload["ok"] and payload["identity"] == {"ok": True, "digest": a["digest"]}
    assert payload["evidence"] == {"ok": True, "digest": a["evidence_digest"]}


def test_verify_refuses_tampered_evidence_and_says_the_model_is_intact(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    edited = manifest(artifact)
    edited["evidence"]["metrics"]["accuracy"] = 0.999
    (artifact / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(EvidenceError, match=r"evidence .*was edited") as caught:
        verify_artifact(artifact)
    assert edited["digest"] in str(caught.value) and "model itself is intact" in str(caught.value)
    code, out = invoke("verify", str(artifact))
    assert code == 2 and "evidence" in out and "identity" in out and "model.onnx" not in out


def test_verify_refuses_evidence_of_another_model(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    flip_last_byte(artifact / "model.onnx")
    edited = manifest(artifact)  # a producer that re-hashes the files but keeps the old evidence seal
    from mlci.canonical import sha256_file
    from mlci.model.artifact import manifest_digest

    edited["files"]["model.onnx"]["sha256"] = sha256_file(artifact / "model.onnx")
    edited["digest"] = manifest_digest(edited)
    (artifact / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(EvidenceError, match="sealed to another identity"):
        verify_artifact(artifact)


def test_verify_refuses_a_tampered_identity_as_such(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    edited = manifest(artifact)
    edited["schema"]["features"][0]["name"] = "renamed"
    (artifact / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match="identity") as caught:
        verify_artifact(artifact)
    assert not isinstance(caught.value, EvidenceError)
    code, out = invoke("verify", str(artifact))
    assert code == 2 and "was edited" in out


def test_verify_refuses_an_evidence_block_that_is_not_an_object(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    edited = manifest(artifact)
    edited["evidence"] = ["accuracy", 1.0]
    (artifact / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(EvidenceError, match="expected an object"):
        verify_artifact(artifact)
    del edited["evidence"]
    (artifact / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(EvidenceError, match="has no evidence"):
        verify_artifact(artifact)


def as_schema_1(artifact: Path) -> dict:
    """Rewrite a schema-2 artifact the way mlci wrote it before the split: figures hashed, latency in
    runtime, baseline metrics and the held-out outlier rate in profile.json (profile schema 2)."""
    old = manifest(artifact)
    evidence = old.pop("evidence")
    del old["evidence_digest"]
    profile = json.loads((artifact / "profile.json").read_text())
    profile["schema_version"] = 2
    profile["baseline_metrics"] = {k: v for k, v in evidence["metrics"].items() if k != "per_class"}
    profile["outlier"].update(evidence["outlier"])
    (artifact / "profile.json").write_text(json.dumps(profile))
    old.update(schema_version=1, metrics=evidence["metrics"], parity=evidence["parity"])
    old["runtime"]["latency_ms"] = evidence["latency_ms"]
    (artifact / "manifest.json").write_text(json.dumps(old))
    reseal(artifact)
    return manifest(artifact)


def test_a_schema_1_artifact_still_verifies_and_reads(stages: dict[str, Path], tmp_path: Path) -> None:
    from mlci.monitor.service import with_evidence

    artifact = copy(stages["a"], tmp_path)
    old = as_schema_1(artifact)
    assert verify_artifact(artifact)["digest"] == old["digest"]
    figures = evidence_of(old)
    assert figures["metrics"] == old["metrics"] and figures["latency_ms"]["p99"] > 0
    code, out = invoke("verify", str(artifact))
    assert code == 0 and "identity ok" in out and "schema 1" in out
    profile = with_evidence(json.loads((artifact / "profile.json").read_text()), old)
    assert profile["baseline_metrics"]["accuracy"] == old["metrics"]["accuracy"]
    assert profile["outlier"]["holdout_outlier_rate"] >= 0


def test_the_monitor_reads_its_baselines_from_the_evidence(stages: dict[str, Path]) -> None:
    from mlci.monitor.outliers import outlier_reference
    from mlci.monitor.service import with_evidence

    a = manifest(stages["a"])
    profile = with_evidence(json.loads((stages["a"] / "profile.json").read_text()), a)
    assert profile["baseline_metrics"]["accuracy"] == a["evidence"]["metrics"]["accuracy"]
    reference = outlier_reference(profile)
    assert reference.source == "held-out rows"
    assert reference.rate == a["evidence"]["outlier"]["holdout_outlier_rate"]


def test_a_manifest_of_an_unknown_schema_version_is_refused(stages: dict[str, Path], tmp_path: Path) -> None:
    artifact = copy(stages["a"], tmp_path)
    edited = manifest(artifact)
    edited["schema_version"] = "2"
    (artifact / "manifest.json").write_text(json.dumps(edited))
    reseal(artifact)
    with pytest.raises(DataError, match="schema_version \"2\"; expected an integer from 1 to 2"):
        verify_artifact(artifact)


def test_evidence_added_to_a_schema_1_artifact_is_refused_not_read(stages: dict[str, Path], tmp_path: Path) -> None:
    """A schema-1 manifest hashes its figures; an `evidence` block added to one (with a digest of its own)
    must not slip past the digest and be read in place of the hashed figures (gate, annotations)."""
    artifact = copy(stages["a"], tmp_path)
    old = as_schema_1(artifact)
    forged = {**old["metrics"], "accuracy": 0.0}
    old["evidence"] = {"metrics": forged, "parity": old["parity"], "latency_ms": {}, "outlier": {}, "identity": old["digest"]}
    old["evidence_digest"] = "sha256:" + "0" * 64
    (artifact / "manifest.json").write_text(json.dumps(old))
    assert evidence_of(old)["metrics"]["accuracy"] == old["metrics"]["accuracy"]  # the hashed figures, not the forged ones
    with pytest.raises(DataError, match="was edited: its identity"):
        verify_artifact(artifact)
