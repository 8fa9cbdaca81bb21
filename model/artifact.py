"""The artifact: a content-addressed directory (model.onnx, manifest.json, profile.json, outlier.onnx).

The digest is sha256 over the canonical JSON of the manifest without its ``digest`` and ``runtime``
keys; the manifest lists every file's sha256, so the digest covers the bytes of every file. ``runtime``
holds what differs between two identical trainings (wall-clock latency, creation time, git commit).

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
    "MANIFEST_FILE",
    "ONNX_FILES",
    "UNHASHED_KEYS",
    "assemble",
    "check_models",
    "library_versions",
    "manifest_digest",
    "read_manifest",
    "short",
    "verify_artifact",
]

MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = ("model.onnx", "outlier.onnx", "profile.json")
ONNX_FILES = ("model.onnx", "outlier.onnx")
UNHASHED_KEYS = ("digest", "runtime")
SCHEMA_VERSION = 1
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
    """Recompute every file hash and the manifest digest; raise on any mismatch, return the manifest."""
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
            f"The manifest of '{artifact}' was edited: its content hashes to {expected}, but it claims "
            f"{manifest['digest']}. Rebuild or re-pull the artifact."
        )
    return manifest


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

