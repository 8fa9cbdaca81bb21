"""The artifact: a content-addressed directory (model.onnx, manifest.json, profile.json, outlier.onnx).

The digest names the model's identity: what gets deployed and the facts that define it. It is sha256
over the canonical JSON of the manifest without its UNHASHED_KEYS; the manifest lists every file's
sha256, so the digest covers the bytes of every file, plus the schema, config, data and code digests,
the split recipe and the library versions.

What was *measured* about the model is its ``evidence`` (metrics and parity on the holdout, latency, the
held-out outlier rate): kept in the manifest but outside the digest, so a last-bit difference between
two CPUs' measurements does not make two models of one. ``evidence_digest`` seals the evidence to the
identity it belongs to (sha256 over both), so edited or transplanted evidence is refused too, and named
apart from an edited model (:class:`EvidenceError`). ``runtime`` holds unverified provenance that differs
between two identical trainings (creation time, git commit, python, machine).

Schema 1 manifests (before the split) hashed metrics and parity into the digest and kept latency in
``runtime``; they still verify and load: :func:`evidence_of` reads their figures where they were.

An artifact is exactly ARTIFACT_FILES plus the manifest, regular files in one directory: a manifest that
lists anything else (``/etc/hostname``, ``../x``) or leaves a file out is refused, so the digest always
covers the model and nothing outside the directory is ever read on the manifest's say-so.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from mlci.canonical import digest_of, sha256_file, write_json
from mlci.errors import DataError

__all__ = [
    "ARTIFACT_FILES",
    "EVIDENCE_KEYS",
    "EvidenceError",
    "MANIFEST_FILE",
    "ONNX_FILES",
    "UNHASHED_KEYS",
    "assemble",
    "check_models",
    "evidence_digest",
    "evidence_of",
    "library_versions",
    "manifest_digest",
    "read_manifest",
    "seal",
    "short",
    "verify_artifact",
]

MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = ("model.onnx", "outlier.onnx", "profile.json")
ONNX_FILES = ("model.onnx", "outlier.onnx")
UNHASHED_KEYS = ("digest", "runtime", "evidence", "evidence_digest")
# What evidence holds: measurements of the model on the holdout and of its speed, not behaviour.
EVIDENCE_KEYS = ("metrics", "parity", "latency_ms", "outlier")
# 2: measurements moved out of the digest into ``evidence``; 1: metrics and parity hashed, latency in runtime.
SCHEMA_VERSION = 2
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LIBRARIES = ("mlci", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the artifact's bytes."""
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class EvidenceError(DataError):
    """The model is intact but the evidence about it (metrics, parity, latency) is edited, foreign or missing."""


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the hashed part of the manifest: the model's identity."""
    # Schema 1 hashed its figures and had no evidence: anything added to one is part of what it hashes.
    unhashed = UNHASHED_KEYS if _schema(manifest) >= 2 else ("digest", "runtime")
    return "sha256:" + digest_of({k: v for k, v in manifest.items() if k not in unhashed})


def _schema(manifest: Mapping[str, Any]) -> int:
    """The manifest's schema version: 1 when absent; one that is not an integer counts as the newest here,
    so its digest still matches and verify_evidence names the bad version rather than a false edit."""
    version = manifest.get("schema_version", 1)
    return version if type(version) is int else SCHEMA_VERSION


def evidence_digest(evidence: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the evidence, which names (``identity``) the digest it was measured on."""
    return "sha256:" + digest_of(evidence)


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Set the manifest's ``digest`` and, when it carries evidence, bind the evidence to it; return it."""
    manifest["digest"] = manifest_digest(manifest)
    if isinstance(manifest.get("evidence"), dict):
        manifest["evidence"]["identity"] = manifest["digest"]
        manifest["evidence_digest"] = evidence_digest(manifest["evidence"])
    return manifest


def evidence_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The measured figures of any manifest: ``metrics``, ``parity``, ``latency_ms``, ``outlier``.

    Schema 2 keeps them in ``evidence``; schema 1 hashed metrics and parity, kept latency in ``runtime``
    and the held-out outlier rate in profile.json (read there by the monitor), so ``outlier`` is empty.
    """
    evidence = manifest.get("evidence")
    if _schema(manifest) >= 2 and isinstance(evidence, dict):
        return {key: evidence.get(key) or {} for key in EVIDENCE_KEYS}
    runtime = manifest.get("runtime") if isinstance(manifest.get("runtime"), dict) else {}
    return {
        "metrics": manifest.get("metrics") or {},
        "parity": manifest.get("parity") or {},
        "latency_ms": runtime.get("latency_ms") or {},
        "outlier": {},
    }


def assemble(
    out_dir: Path,
    *,
    model_onnx: Path,
    outlier_onnx: bytes,
    profile: Mapping[str, Any],
    hashed: Mapping[str, Any],
    evidence: Mapping[str, Any],
    runtime: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the artifact files into ``out_dir`` and return the manifest (with its digests).

    ``hashed`` are the facts that define the model (they enter the digest); ``evidence`` what was
    measured about it (EVIDENCE_KEYS; sealed to the digest, outside it); ``runtime`` unverified provenance.
    """
    unknown = sorted(set(evidence) - set(EVIDENCE_KEYS))
    if unknown:
        raise ValueError(f"evidence has {unknown}; expected only {list(EVIDENCE_KEYS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_onnx, out_dir / "model.onnx")
    (out_dir / "outlier.onnx").write_bytes(outlier_onnx)
    write_json(out_dir / "profile.json", profile)
    files = {
        name: {"sha256": sha256_file(out_dir / name), "size": (out_dir / name).stat().st_size} for name in ARTIFACT_FILES
    }
    manifest: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **hashed, "files": files, "libraries": library_versions()}
    manifest["evidence"] = dict(evidence)
    seal(manifest)
    libc = " ".join(part for part in platform.libc_ver() if part)
    manifest["runtime"] = {**runtime, "python": platform.python_version(), "machine": platform.machine(), "libc": libc or None}
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(artifact: Path) -> dict[str, Any]:
    """The manifest of an artifact directory, with a clear error when it is not one."""
    path = artifact / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"'{artifact}' is not an mlci artifact: it has no {MANIFEST_FILE}. Run `mlci run` to make one.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is not valid JSON ({exc}); the artifact is damaged. Rebuild or re-pull it.") from exc
    if not isinstance(manifest, dict) or "digest" not in manifest or "files" not in manifest:
        raise DataError(f"'{path}' lacks 'digest' or 'files'; it is not an mlci manifest.")
    return manifest


def _listed_files(artifact: Path, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``, checked to be exactly ARTIFACT_FILES, each with a sha256 (and maybe a size)."""
    files = manifest["files"]
    fix = "Rebuild or re-pull the artifact."
    if not isinstance(files, dict):
        raise DataError(
            f"The manifest of '{artifact}' has 'files' as a {type(files).__name__}; expected an object giving "
            f"the sha256 and size of each of {', '.join(ARTIFACT_FILES)}. {fix}"
        )
    missing = [name for name in ARTIFACT_FILES if name not in files]
    extra = sorted(set(files) - set(ARTIFACT_FILES))
    if missing or extra:
        problems = [f"does not list {', '.join(map(repr, missing))}"] if missing else []
        problems += [f"lists {', '.join(map(repr, extra))}, which no mlci artifact has"] if extra else []
        raise DataError(
            f"The manifest of '{artifact}' {' and '.join(problems)}: an mlci artifact holds exactly "
            f"{', '.join(ARTIFACT_FILES)} and {MANIFEST_FILE}, side by side. {fix}"
        )
    for name in ARTIFACT_FILES:
        entry = files[name]
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size", 0) if isinstance(entry, dict) else None
        if not isinstance(sha, str) or _SHA256.fullmatch(sha) is None or type(size) is not int or size < 0:
            raise DataError(
                f"The manifest of '{artifact}' gives {name} as {json.dumps(entry)[:120]}; expected "
                f'{{"sha256": "<64 lowercase hex>", "size": <bytes>}}. {fix}'
            )
    return files


def verify_artifact(artifact: Path) -> dict[str, Any]:
    """Verify the identity (every file hash, the digest), then the evidence; raise on any mismatch.

    Returns the manifest. A broken identity raises :class:`DataError`, broken evidence on an intact
    identity :class:`EvidenceError` (see :func:`verify_evidence`).
    """
    manifest = read_manifest(artifact)
    for name, entry in _listed_files(artifact, manifest).items():
        path = artifact / name
        if path.is_symlink():
            raise DataError(
                f"{name} in '{artifact}' is a symbolic link; an artifact's files must be regular files in its "
                "directory. Rebuild or re-pull the artifact."
            )
        if not path.is_file():
            raise DataError(f"Artifact '{artifact}' is missing {name}, which its manifest lists.")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise DataError(
                f"{name} in '{artifact}' has sha256 {actual[:12]}…, but the manifest says "
                f"{entry['sha256'][:12]}…: the file was changed or corrupted. Rebuild or re-pull the artifact."
            )
    expected = manifest_digest(manifest)
    if expected != manifest["digest"]:
        raise DataError(
            f"The manifest of '{artifact}' was edited: its identity (schema, data, code, files) hashes to "
            f"{expected}, but it claims {manifest['digest']}. Rebuild or re-pull the artifact."
        )
    verify_evidence(artifact, manifest)
    return manifest


def verify_evidence(artifact: Path, manifest: Mapping[str, Any]) -> None:
    """Check that a schema-2 manifest's evidence is an object sealed to its (already verified) identity.

    Schema 1 manifests have no separate evidence: their figures are part of the identity just verified.
    """
    version = manifest.get("schema_version", 1)
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise DataError(
            f"The manifest of '{artifact}' has schema_version {json.dumps(version)}; expected an integer from 1 "
            f"to {SCHEMA_VERSION}. A newer mlci wrote it, or it is not an mlci manifest: upgrade mlci or rebuild."
        )
    if version < 2:
        return
    intact = f"the model itself is intact (identity {manifest['digest']})"
    fix = "Re-run `mlci evaluate` on the model's train and export outputs, or re-pull the artifact."
    evidence, sealed = manifest.get("evidence"), manifest.get("evidence_digest")
    if evidence is None or sealed is None:
        raise EvidenceError(
            f"The manifest of '{artifact}' has no evidence{'' if evidence is None else '_digest'}: a schema "
            f"{manifest.get('schema_version')} manifest carries its metrics, parity and latency in 'evidence', "
            f"sealed by 'evidence_digest'; {intact}. {fix}"
        )
    if not isinstance(evidence, dict):
        raise EvidenceError(
            f"The evidence in the manifest of '{artifact}' is a {type(evidence).__name__}; expected an object "
            f"with {', '.join(EVIDENCE_KEYS)}; {intact}. {fix}"
        )
    claimed = evidence.get("identity")
    if claimed != manifest["digest"]:
        raise EvidenceError(
            f"The evidence in the manifest of '{artifact}' is sealed to another identity ({claimed}): it was "
            f"measured on another model, not on this one; {intact}. {fix}"
        )
    if sealed != evidence_digest(evidence):
        raise EvidenceError(
            f"The evidence (metrics, parity, latency) in the manifest of '{artifact}' was edited: it hashes to "
            f"{evidence_digest(evidence)}, but it claims {sealed}; {intact}. {fix}"
        )


def check_models(artifact: Path) -> None:
    """Refuse the artifact if an ONNX file keeps tensor data in external files (see onnxio.refuse_external_data).

    Hashes cannot tell: a crafted artifact is self-consistent. For an artifact mlci did not just write
    (a directory handed to `mlci verify`, a pull), after :func:`verify_artifact`.
    """
    from mlci.model.onnxio import refuse_external_data

    for name in ONNX_FILES:
        refuse_external_data((artifact / name).read_bytes(), f"{name} in '{artifact}'")


def short(digest: str) -> str:
    """``sha256:abcdef123456`` for display."""
    return digest[:19]

