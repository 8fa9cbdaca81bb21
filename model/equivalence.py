"""`mlci verify ARTIFACT --against OTHER`: are two builds of the same inputs the same model in function?

Two trainings of one commit on different machines (another CPU's BLAS kernel, arm64 instead of x86-64)
can give artifacts whose bytes, and so digests, differ in the last bits of a coefficient. This module says
whether such a pair is *functionally equivalent*, which is a weaker claim than "the same build":

- both artifacts verify (hashes, digest, no ONNX external data); otherwise the input is bad (exit 2);
- the same schema: task, features (names, kinds, datatypes, in order), target and classes;
- the same inputs: data file, config and factory code digests (each one that differs is named);
- on ARTIFACT's holdout (recomputed from the data file with the split the manifest records, as the gate
  does), both models' outputs within ARTIFACT's parity tolerance (probabilities: absolute, ``[export]
  abs_tolerance``; regression values: relative, ``rel_tolerance``) and labels 100% equal.

Library versions are reported when they differ but do not decide: a new skl2onnx giving the same function
is what equivalence is for. The artifacts store no rows, so the holdout comes from the data file
(``--data`` or ``[data] path`` of ``-c mlci.toml``), which must be the one ARTIFACT was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlci.canonical import sha256_file
from mlci.errors import DataError
from mlci.model.artifact import check_models, short, verify_artifact
from mlci.model.data import SPLIT_SCHEME, Schema, read_table, split_mask, typed_features
from mlci.model.onnxio import Prediction, feeds_from_frame, open_session, predict

__all__ = ["Equivalence", "compare_artifacts", "equivalence_text"]

# What "the same inputs" means: (label, where in the manifest).
_INPUTS = (("data", ("data", "sha256")), ("config", ("code", "config_sha256")), ("factory code", ("code", "factory_sha256")))


@dataclass
class Equivalence:
    """The comparison of two artifacts; ``equivalent`` only when every check matched."""

    artifact: str
    other: str
    identical: bool  # same digest: the same build, nothing more to show
    matched: list[str] = field(default_factory=list)
    differed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictions: dict[str, Any] | None = None

    @property
    def equivalent(self) -> bool:
        return not self.differed

    def to_json(self) -> dict[str, Any]:
        return {
            "equivalent": self.equivalent,
            "identical": self.identical,
            "artifact": self.artifact,
            "against": self.other,
            "matched": self.matched,
            "differed": self.differed,
            "notes": self.notes,
            "predictions": self.predictions,
        }


def _get(manifest: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _schema_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """How the two manifests' task and schema differ, one line each (empty: the same)."""
    out = []
    if a.get("task") != b.get("task"):
        out.append(f"task: {a.get('task')!r} vs {b.get('task')!r}")
    sa, sb = a.get("schema") or {}, b.get("schema") or {}
    fa = {f["name"]: f for f in sa.get("features", [])}
    fb = {f["name"]: f for f in sb.get("features", [])}
    only_a, only_b = [n for n in fa if n not in fb], [n for n in fb if n not in fa]
    if only_a:
        out.append(f"features only in ARTIFACT: {', '.join(only_a)}")
    if only_b:
        out.append(f"features only in OTHER: {', '.join(only_b)}")
    for name in (n for n in fa if n in fb and fa[n] != fb[n]):
        out.append(f"feature {name!r}: {fa[name].get('kind')}/{fa[name].get('datatype')} vs {fb[name].get('kind')}/{fb[name].get('datatype')}")
    if not only_a and not only_b and list(fa) != list(fb):
        out.append("features: the same names in another order (the served model's inputs differ)")
    for key in ("target", "classes"):
        if sa.get(key) != sb.get(key):
            out.append(f"{key}: {sa.get(key)!r} vs {sb.get(key)!r}")
    return out


def _tolerances(manifest: dict[str, Any], artifact: Path) -> tuple[float, float]:
    """ARTIFACT's parity tolerances (abs on probabilities, rel on values), as its export was held to."""
    from mlci.model.artifact import evidence_of

    parity = evidence_of(manifest)["parity"]
    abs_tol, rel_tol = parity.get("abs_tolerance"), parity.get("rel_tolerance")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 for t in (abs_tol, rel_tol)):
        raise DataError(
            f"The manifest of '{artifact}' records no parity tolerances (parity.abs_tolerance and rel_tolerance: "
            f"got {abs_tol!r} and {rel_tol!r}), so there is no tolerance to compare predictions within. "
            "Rebuild it with this mlci."
        )
    return float(abs_tol), float(rel_tol)


def holdout(manifest: dict[str, Any], artifact: Path, data: Path) -> Any:
    """ARTIFACT's holdout rows of ``data``, typed by its schema; DataError unless ``data`` is its data file."""
    if not data.is_file():
        raise DataError(f"The data file '{data}' does not exist; pass the file ARTIFACT was trained on with --data.")
    digest = sha256_file(data)
    if digest != _get(manifest, ("data", "sha256")):
        raise DataError(
            f"'{data}' (sha256 {digest[:12]}…) is not the data file '{artifact}' was trained on (sha256 "
            f"{str(_get(manifest, ('data', 'sha256')))[:12]}…): its holdout cannot be recomputed from it. Pass that "
            "file with --data, or -c the mlci.toml of the commit the artifact was built from."
        )
    split = _get(manifest, ("data", "split")) or {}
    fraction, seed = _get(manifest, ("data", "holdout_fraction")), _get(manifest, ("data", "seed"))
    if split.get("scheme") != SPLIT_SCHEME or not isinstance(split.get("columns"), list):
        raise DataError(
            f"'{artifact}' records its split as {split!r}; comparing predictions needs scheme {SPLIT_SCHEME!r} with "
            "the columns it hashed (artifacts from an older mlci lack them). Rebuild it with this mlci."
        )
    raw = read_table(data)
    mask = split_mask(raw, float(fraction), int(seed), split["columns"])
    recorded = _get(manifest, ("data", "holdout_rows"))
    if recorded is not None and int(mask.sum()) != recorded:
        raise DataError(
            f"'{artifact}' records {recorded} holdout rows, but recomputing its split on '{data}' gives "
            f"{int(mask.sum())}: it was built by a different mlci or pandas. Rebuild it with this mlci."
        )
    return typed_features(raw[mask], Schema.from_json(manifest["schema"]), data)


def _run(artifact: Path, manifest: dict[str, Any], X: Any) -> Prediction:
    schema = Schema.from_json(manifest["schema"])
    return predict(open_session(artifact / "model.onnx"), feeds_from_frame(X, schema), manifest["task"])


def compare_predictions(task: str, a: Prediction, b: Prediction, abs_tol: float, rel_tol: float) -> dict[str, Any]:
    """Max abs (and rel) difference of the two models' outputs, label agreement, and whether within tolerance."""
    ref = a.probabilities if task == "classification" else a.values
    cand = b.probabilities if task == "classification" else b.values
    assert ref is not None and cand is not None
    diff = np.abs(ref - cand)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1.0)).max()) if diff.size else 0.0
    out: dict[str, Any] = {"rows": len(ref), "max_abs_diff": max_abs, "max_rel_diff": max_rel}
    if task == "classification":
        assert a.labels is not None and b.labels is not None
        same = np.asarray(a.labels == b.labels)
        out |= {
            "output": "probabilities",
            "abs_tolerance": abs_tol,
            "label_agreement": float(same.mean()) if len(same) else 1.0,
            "labels_differ_on_rows": int((~same).sum()),
        }
        out["within_tolerance"] = max_abs <= abs_tol and out["labels_differ_on_rows"] == 0
    else:
        out |= {"output": "values", "rel_tolerance": rel_tol, "within_tolerance": max_rel <= rel_tol}
    return out


def compare_artifacts(artifact: Path, other: Path, data: Path) -> Equivalence:
    """Compare ARTIFACT with OTHER; DataError (exit 2) when either is not a sound artifact or ``data`` is wrong."""
    ma, mb = verify_artifact(artifact), verify_artifact(other)
    check_models(artifact)
    check_models(other)
    result = Equivalence(ma["digest"], mb["digest"], identical=ma["digest"] == mb["digest"])
    if result.identical:
        result.matched.append("digest (the same build: every file is byte for byte the same)")
        return result
    differing_files = sorted(n for n in ma["files"] if ma["files"][n]["sha256"] != mb["files"][n]["sha256"])
    result.notes.append(f"bytes differ: {', '.join(differing_files) or 'manifest only'}")
    schema = _schema_differences(ma, mb)
    result.differed += [f"schema: {line}" for line in schema]
    if not schema:
        n = len(ma["schema"].get("features", []))
        result.matched.append(f"schema ({ma['task']}, {n} features, target {ma['schema'].get('target')!r})")
    for label, path in _INPUTS:
        va, vb = _get(ma, path), _get(mb, path)
        (result.matched if va == vb else result.differed).append(
            f"{label} digest" if va == vb else f"{label} digest: {str(va)[:12]}… vs {str(vb)[:12]}…"
        )
    libs_a, libs_b = ma.get("libraries") or {}, mb.get("libraries") or {}
    for name in sorted(set(libs_a) | set(libs_b)):
        if libs_a.get(name) != libs_b.get(name):
            result.notes.append(f"library {name}: {libs_a.get(name)} vs {libs_b.get(name)} (not decisive)")
    if schema:
        result.notes.append("predictions not compared: the models take or give different things")
        return result
    abs_tol, rel_tol = _tolerances(ma, artifact)
    X = holdout(ma, artifact, data)
    result.predictions = compare_predictions(ma["task"], _run(artifact, ma, X), _run(other, mb, X), abs_tol, rel_tol)
    p = result.predictions
    line = f"predictions on {p['rows']} holdout rows: " + _figures(p)
    (result.matched if p["within_tolerance"] else result.differed).append(line)
    return result


def _figures(p: dict[str, Any]) -> str:
    if p["output"] == "probabilities":
        return (
            f"max abs diff {p['max_abs_diff']:.3g} on probabilities (tolerance {p['abs_tolerance']:g}), "
            f"labels {100 * p['label_agreement']:.1f}% equal ({p['labels_differ_on_rows']} rows differ)"
        )
    return f"max rel diff {p['max_rel_diff']:.3g} on values (tolerance {p['rel_tolerance']:g}), max abs diff {p['max_abs_diff']:.3g}"


def equivalence_text(result: Equivalence) -> str:
    """The report for people: the verdict, then what matched, what differed and the notes."""
    verdict = "equivalent" if result.equivalent else "NOT equivalent"
    lines = [f"{verdict}: {short(result.artifact)}… against {short(result.other)}…"]
    lines += [f"  same     {m}" for m in result.matched]
    lines += [f"  differs  {d}" for d in result.differed]
    lines += [f"  note     {n}" for n in result.notes]
    return "\n".join(lines)
