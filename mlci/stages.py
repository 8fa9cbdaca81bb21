"""The model stages as plain functions over directories: what `mlci <stage>` and `mlci run` both call.

Each stage reads its inputs from directories and writes its outputs into ``out``; nothing passes in
memory, which is what lets the same stage run in-process or in a container and give the same bytes.
Heavy libraries (pandas, scikit-learn, onnxruntime) are imported inside the functions so that
`mlci --help` and a fully cached `mlci run` never pay for them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from mlci import __version__
from mlci.canonical import digest_of, sha256_bytes, sha256_file
from mlci.config import Config
from mlci.numerics import prepare

__all__ = ["RELEASE_STAGES", "STAGES", "Stage", "code_digest", "config_digest", "factory_source", "git_commit", "holdout_rows", "stage_keys"]


def train_stage(config: Config, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Fit the estimator; writes estimator.skops, split.json, train.json."""
    prepare(config.reproducibility.numerics)
    from mlci.model.train import run_train

    result = run_train(config, out)
    return {"estimator": result.estimator, "train_rows": result.train_rows, "holdout_rows": result.holdout_rows}


def export_stage(config: Config, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Convert to ONNX and check parity; writes model.onnx, parity.json."""
    prepare(config.reproducibility.numerics)
    from mlci.model.export import run_export

    result = run_export(config, inputs["train"], out)
    return {
        "max_abs_diff": result.parity.max_abs_diff,
        "max_rel_diff": result.parity.max_rel_diff,
        "label_agreement": result.parity.label_agreement,
        "size_bytes": result.size_bytes,
    }


def evaluate_stage(config: Config, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Measure with onnxruntime and assemble the content-addressed artifact in ``out``."""
    prepare(config.reproducibility.numerics)
    from mlci.model.artifact import assemble
    from mlci.model.evaluate import run_evaluate
    from mlci.model.export import ML_OPSET, MODEL_FILE, PARITY_FILE
    from mlci.model.train import SPLIT_FILE, TRAIN_FILE
    from mlci.numerics import record

    train_dir, export_dir = inputs["train"], inputs["export"]
    result = run_evaluate(config, train_dir, export_dir)
    summary = json.loads((train_dir / TRAIN_FILE).read_text())
    split = json.loads((train_dir / SPLIT_FILE).read_text())
    parity = json.loads((export_dir / PARITY_FILE).read_text())
    schema = summary["schema"]
    hashed = {
        "name": config.name,
        "task": config.task,
        "schema": {**schema, "classes": summary["classes"]},
        "estimator": summary["estimator"],
        "data": {
            "sha256": split["data_sha256"],
            "rows": split["rows"],
            "holdout_rows": len(split["holdout_rows"]),
            "holdout_fraction": split["holdout_fraction"],
            "seed": split["seed"],
            # Enough to recompute which rows of any data file this model did not train on (the gate does).
            "split": {"scheme": split["scheme"], "columns": split["columns"]},
        },
        "code": {
            "config_sha256": config_digest(config),
            "factory_sha256": sha256_bytes(factory_source(config)) if config.estimator.factory else None,
        },
        "onnx": {
            "opset": config.export.target_opset,
            "ml_opset": ML_OPSET,
            "inputs": [{"name": f["name"], "datatype": f["datatype"], "shape": [-1, 1]} for f in schema["features"]],
            "outputs": (
                [{"name": "label", "shape": [-1]}, {"name": "probabilities", "shape": [-1, len(summary["classes"])]}]
                if config.task == "classification"
                else [{"name": "variable", "shape": [-1, 1]}]
            ),
        },
        "reproducible": True,
        # The numerics in effect (mode, arch, BLAS kernel, numpy dispatch, threads): other numerics, another build.
        "numerics": record(config.reproducibility.numerics),
    }
    # Measured, not defining: outside the digest (a last-bit difference between CPUs is not another model).
    evidence = {
        "metrics": result.metrics,
        "parity": {k: v for k, v in parity.items() if k != "worst_rows"},
        "latency_ms": result.latency_ms,
        "outlier": result.outlier_evidence,
    }
    runtime = {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(config.root),
    }
    manifest = assemble(
        out,
        model_onnx=export_dir / MODEL_FILE,
        outlier_onnx=result.outlier_onnx,
        profile=result.profile,
        hashed=hashed,
        evidence=evidence,
        runtime=runtime,
    )
    return {"digest": manifest["digest"], "metrics": result.metrics, "latency_ms": result.latency_ms}


def holdout_rows(config: Config, limit: int | None = None) -> Any:
    """The holdout rows (recomputed from the data and the seed: the split is a pure function of both)."""
    from mlci.model.data import holdout_mask
    from mlci.model.train import load_data

    data = load_data(config)
    X = data.X[holdout_mask(data, config.holdout, config.seed)]
    return X if limit is None else X.head(limit)


def smoke_stage(config: Config, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Serve the artifact with the real server and compare served output with in-process output."""
    from mlci.canonical import write_json
    from mlci.errors import CheckFailed
    from mlci.release.smoke import run_smoke

    artifact = inputs["evaluate"]
    try:
        report = run_smoke(
            artifact, holdout_rows(config, config.smoke.rows), max_p99_ms=config.smoke.max_p99_ms, timeout_s=config.smoke.timeout_s
        ).to_json()
    except CheckFailed as exc:  # a server that never became ready is a failed smoke test, judged by the gate
        manifest = json.loads((artifact / "manifest.json").read_text())
        report = {"passed": False, "digest": manifest["digest"], "reason": str(exc), "rows": 0,
                  "p50_ms": None, "p99_ms": None, "max_p99_ms": config.smoke.max_p99_ms, "url": "", "mismatches": []}
    write_json(out / "smoke.json", report)
    return {"passed": report["passed"], "p99_ms": report["p99_ms"], "reason": report["reason"]}


def gate_stage(config: Config, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Judge the candidate (against production when ``inputs`` has one); writes verdict.json and verdict.md."""
    from mlci.canonical import write_json
    from mlci.model.gate import run_gate, verdict_markdown

    smoke = json.loads((inputs["smoke"] / "smoke.json").read_text()) if "smoke" in inputs else None
    verdict = run_gate(config, inputs["evaluate"], inputs.get("production"), smoke).to_json()
    write_json(out / "verdict.json", verdict)
    (out / "verdict.md").write_text(verdict_markdown(verdict))
    return {"passed": verdict["passed"], "first_run": verdict["first_run"], "production": verdict["production"],
            "failed": [c["name"] for c in verdict["checks"] if not c["passed"]]}


StageFn = Callable[[Config, Mapping[str, Path], Path], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """A named stage, the stages whose outputs it reads, and the config tables its result depends on."""

    name: str
    fn: StageFn
    needs: tuple[str, ...]
    config_tables: tuple[str, ...]


STAGES: tuple[Stage, ...] = (
    Stage("train", train_stage, (), ("model", "data", "split", "estimator", "reproducibility")),
    Stage("export", export_stage, ("train",), ("export", "reproducibility")),
    Stage("evaluate", evaluate_stage, ("train", "export"), ("evaluate", "reproducibility")),
)
# After evaluate: the smoke test depends on the serving code too, the gate on production (keyed in pipeline.py).
RELEASE_STAGES: tuple[Stage, ...] = (
    Stage("smoke", smoke_stage, ("evaluate",), ("smoke",)),
    Stage("gate", gate_stage, ("evaluate", "smoke"), ("gate", "data", "split")),
)


def _stage_code_files(packages: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for package in packages:
        spec = find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            files.extend(sorted(Path(location).glob("*.py")))
    return files


# mlci's own top-level modules whose code shapes what a stage writes: the stage functions, the canonical
# JSON the digests hash, the numerics record (hashed in the manifest) and the config's defaults.
STAGE_MODULES = ("stages.py", "canonical.py", "numerics.py", "config.py")


def code_files(packages: tuple[str, ...] = ("mlci.model",)) -> list[Path]:
    """The source files :func:`code_digest` hashes."""
    here = Path(__file__).parent
    return [*_stage_code_files(packages), *(here / name for name in STAGE_MODULES)]


def code_digest(packages: tuple[str, ...] = ("mlci.model",)) -> str:
    """Hash of mlci's own stage code: a new mlci invalidates the stage cache, a comment in a README does not."""
    parts = {f"{p.parent.name}/{p.name}": sha256_file(p) for p in code_files(packages)}
    return digest_of({"version": __version__, "files": parts})


def config_digest(config: Config, tables: tuple[str, ...] | None = None) -> str:
    """Hash of the config tables that shape the model; paths and the workspace location do not count."""
    raw = {k: v for k, v in config.raw.items() if k != "workspace" and (tables is None or k in tables)}
    if "data" in raw:
        raw["data"] = {k: v for k, v in raw["data"].items() if k != "path"}
    return digest_of(raw)


def stage_keys(config: Config, data_digest: str, code: str, factory: bytes) -> dict[str, str]:
    """Each stage's cache key: its own config tables plus the keys of the stages it reads (a Merkle chain)."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        keys[stage.name] = digest_of(
            {
                "stage": stage.name,
                "code": code,
                "config": config_digest(config, stage.config_tables),
                "data": data_digest if stage.name == "train" else None,
                "factory": sha256_bytes(factory) if stage.name == "train" else None,
                "needs": {n: keys[n] for n in stage.needs},
            }
        )
    return keys


def factory_source(config: Config) -> bytes:
    """Source of the `module:function` factory module (part of the code digest); b'' for a declarative spec.

    Found without importing the module, so a cached run stays cheap.
    """
    if config.estimator.factory is None:
        return b""
    module = config.estimator.factory.partition(":")[0]
    candidate = config.root / (module.replace(".", "/") + ".py")
    if candidate.is_file():
        return candidate.read_bytes()
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin).read_bytes()
    return config.estimator.factory.encode()


def git_commit(root: Path) -> str | None:
    """HEAD of the git repository holding ``root`` (provenance only; not part of the digest)."""
    from mlci.registry.settings import without_credentials

    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
            env=without_credentials(os.environ),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None

