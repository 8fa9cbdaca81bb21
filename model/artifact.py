"""The artifact: a content-addressed directory (model.onnx, manifest.json, profile.json, outlier.onnx).

The digest is sha256 over the canonical JSON of the manifest without its ``digest`` and ``runtime``
keys; the manifest lists every file's sha256, so the digest covers the bytes of every file. ``runtime``
holds what differs between two identical trainings (wall-clock latency, creation time, git commit).
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from mlci.canonical import digest_of, sha256_file, write_json
from mlci.errors import DataError

__all__ = [
    "ARTIFACT_FILES",
    "MANIFEST_FILE",
    "UNHASHED_KEYS",
    "assemble",
    "library_versions",
    "manifest_digest",
    "read_manifest",
    "short",
    "verify_artifact",
]

MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = ("model.onnx", "outlier.onnx", "profile.json")
UNHASHED_KEYS = ("digest", "runtime")
SCHEMA_VERSION = 1
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


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the hashed part of the manifest."""
    return "sha256:" + digest_of({k: v for k, v in manifest.items() if k not in UNHASHED_KEYS})


def assemble(
    out_dir: Path,
    *,
    model_onnx: Path,
    outlier_onnx: bytes,
    profile: Mapping[str, Any],
    hashed: Mapping[str, Any],
    runtime: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the artifact files into ``out_dir`` and return the manifest (with its digest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_onnx, out_dir / "model.onnx")
    (out_dir / "outlier.onnx").write_bytes(outlier_onnx)
    write_json(out_dir / "profile.json", profile)
    files = {
        name: {"sha256": sha256_file(out_dir / name), "size": (out_dir / name).stat().st_size} for name in ARTIFACT_FILES
    }
    manifest: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **hashed, "files": files, "libraries": library_versions()}
    manifest["digest"] = manifest_digest(manifest)
    manifest["runtime"] = {**runtime, "python": platform.python_version(), "machine": platform.machine()}
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


def verify_artifact(artifact: Path) -> dict[str, Any]:
    """Recompute every file hash and the manifest digest; raise on any mismatch, return the manifest."""
    manifest = read_manifest(artifact)
    for name, entry in manifest["files"].items():
        path = artifact / name
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
            f"The manifest of '{artifact}' was edited: its content hashes to {expected}, but it claims "
            f"{manifest['digest']}. Rebuild or re-pull the artifact."
        )
    return manifest


def short(digest: str) -> str:
    """``sha256:abcdef123456`` for display."""
    return digest[:19]

