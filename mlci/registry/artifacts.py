"""Model artifacts and small JSON documents as OCI artifacts: the same code for every store.

A model is an OCI image manifest with ``artifactType`` ``application/vnd.mlci.model.v1``; its config is
the artifact's manifest.json and each file is one layer titled with its file name. The OCI manifest
holds no timestamp, so pushing the same artifact twice gives the same manifest digest. Tags are moved
only after every blob and the manifest (by digest) are stored: an interrupted push never leaves a tag
pointing at something incomplete.

Files move between disk and store piece by piece, in both directions. A pull takes exactly the
artifact's files, each at most its declared size (itself capped by MAX_FILE_BYTES), and checks the
result like any artifact mlci did not write: hashes, digest, and no ONNX external data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.canonical import canonical_json
from mlci.errors import ConfigError, MlciError, RegistryError
from mlci.model.artifact import ARTIFACT_FILES, MANIFEST_FILE, check_models, evidence_of, verify_artifact
from mlci.registry.store import MAX_SMALL_BLOB_BYTES, OCI_MANIFEST, Store, check_tag, digest_bytes, is_digest
from mlci.workspace import atomic_dir

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPES",
    "MAX_FILE_BYTES",
    "MIN_DIGEST_PREFIX",
    "MODEL_ARTIFACT_TYPE",
    "PushResult",
    "digest_tag",
    "expand_ref",
    "get_document",
    "model_manifest",
    "pull_artifact",
    "push_artifact",
    "put_document",
    "resolve",
    "tag_artifact",
    "tag_digest",
]

MODEL_ARTIFACT_TYPE = "application/vnd.mlci.model.v1"
CONFIG_MEDIA_TYPE = "application/vnd.mlci.model.config.v1+json"
LAYER_MEDIA_TYPES = {
    "model.onnx": "application/vnd.mlci.model.onnx",
    "outlier.onnx": "application/vnd.mlci.outlier.onnx",
    "profile.json": "application/vnd.mlci.profile.v1+json",
    MANIFEST_FILE: "application/vnd.mlci.manifest.v1+json",
}
TITLE = "org.opencontainers.image.title"
DIGEST_KEY = "dev.mlci.digest"
KIND_KEY = "dev.mlci.kind"
# The OCI 1.1 "empty" config for artifacts that need none (documents).
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
# The most each pulled file may declare: an ONNX model without external data cannot pass protobuf's
# 2 GiB, and the JSON files are read whole into memory (by verify, serve and the monitor).
MAX_FILE_BYTES = {
    "model.onnx": 2 << 30,
    "outlier.onnx": 2 << 30,
    "profile.json": MAX_SMALL_BLOB_BYTES,
    MANIFEST_FILE: MAX_SMALL_BLOB_BYTES,
}
_FILES = (*ARTIFACT_FILES, MANIFEST_FILE)
_KIND = re.compile(r"[a-z0-9][a-z0-9-]*")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The fewest hex digits that name an artifact by a digest prefix (as git's short hashes); mlci prints 12.
MIN_DIGEST_PREFIX = 7
_HEX = re.compile(r"[0-9a-f]+")
_DIGEST_TAG = re.compile(r"sha256-([0-9a-f]{64})")


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the OCI manifest digest, the mlci artifact digest, and the tags now on it."""

    manifest_digest: str
    artifact_digest: str
    tags: tuple[str, ...]


def digest_tag(artifact_digest: str) -> str:
    """The tag that names an mlci digest: ``sha256:<hex>`` → ``sha256-<hex>``."""
    return artifact_digest.replace(":", "-")


def _descriptor(media_type: str, data: bytes, title: str | None = None) -> dict[str, Any]:
    return _described(media_type, digest_bytes(data), len(data), title)


def _described(media_type: str, digest: str, size: int, title: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if title is not None:
        entry["annotations"] = {TITLE: title}
    return entry


def _annotations(mlci_manifest: Mapping[str, Any]) -> dict[str, str]:
    out = {DIGEST_KEY: str(mlci_manifest["digest"]), "dev.mlci.name": str(mlci_manifest.get("name", ""))}
    commit = (mlci_manifest.get("runtime") or {}).get("git_commit")
    if isinstance(commit, str) and commit:
        out["org.opencontainers.image.revision"] = commit
    if isinstance(mlci_manifest.get("evidence_digest"), str):
        out["dev.mlci.evidence.digest"] = mlci_manifest["evidence_digest"]
    for name, value in evidence_of(mlci_manifest)["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"dev.mlci.metrics.{name}"] = json.dumps(value)
    return out


def model_manifest(artifact_dir: Path, mlci_manifest: Mapping[str, Any]) -> tuple[bytes, dict[str, Path]]:
    """The OCI manifest bytes for a verified artifact directory, and the file of every blob it references.

    The files' digests are the (verified) manifest's own; the stores check each blob against its digest
    again as they write it, so a file changed since is refused rather than stored.
    """
    files = mlci_manifest["files"]
    config = _descriptor(CONFIG_MEDIA_TYPE, (artifact_dir / MANIFEST_FILE).read_bytes())
    digests = {MANIFEST_FILE: config["digest"], **{n: f"sha256:{files[n]['sha256']}" for n in ARTIFACT_FILES}}
    layers = [
        _described(LAYER_MEDIA_TYPES[n], digests[n], (artifact_dir / n).stat().st_size, n) for n in _FILES
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
        "annotations": _annotations(mlci_manifest),
    }
    return canonical_json(manifest), {digests[n]: artifact_dir / n for n in _FILES}


def _upload(store: Store, blobs: Mapping[str, bytes | Path]) -> None:
    """Store each blob the store lacks: files streamed from disk, small documents from memory."""
    for digest, blob in blobs.items():
        if store.has_blob(digest):
            continue
        if isinstance(blob, Path):
            store.put_blob_file(blob, digest)
        else:
            store.put_blob(blob, digest)


def push_artifact(
    store: Store,
    artifact_dir: Path,
    tags: Iterable[str] = ("candidate",),
    on_progress: Callable[[str], None] | None = None,
) -> PushResult:
    """Verify the artifact, upload its blobs (skipping stored ones), store the manifest, then move the tags."""
    mlci_manifest = verify_artifact(artifact_dir)
    all_tags = tuple(dict.fromkeys([*(check_tag(t) for t in tags), digest_tag(mlci_manifest["digest"])]))
    data, blobs = model_manifest(artifact_dir, mlci_manifest)
    _upload(store, blobs)
    if on_progress is not None:
        on_progress("blobs")
    manifest_digest = store.put_manifest(data, OCI_MANIFEST, digest_bytes(data))
    if on_progress is not None:
        on_progress("manifest")
    for tag in all_tags:
        store.put_manifest(data, OCI_MANIFEST, tag)
    return PushResult(manifest_digest, str(mlci_manifest["digest"]), all_tags)


def _digest_form(ref: str) -> str | None:
    """The lowercase hex a digest-like ``ref`` gives (``sha256:<hex>``, or bare hex long enough), else None.

    Text that claims to be a digest but is not one is refused here with what was expected.
    """
    scheme, colon, rest = ref.partition(":")
    if not colon:
        text = ref.lower()
        return text if len(text) >= MIN_DIGEST_PREFIX and _HEX.fullmatch(text) else None
    expected = (
        f"expected a tag, or a digest 'sha256:' followed by {MIN_DIGEST_PREFIX} to 64 hexadecimal digits "
        "(the short form mlci prints, 'sha256:<12 hex>', is enough)"
    )
    if scheme.lower() != "sha256":
        raise ConfigError(
            f"{ref!r} is neither a tag nor a sha256 digest: {expected}. Only sha256 digests are supported."
        )
    hex_ = rest.lower()
    if hex_ and _HEX.fullmatch(hex_) is None:
        raise ConfigError(
            f"{ref!r} is not a digest: after 'sha256:' only hexadecimal digits (0-9, a-f) may follow; {expected}."
        )
    if len(hex_) < MIN_DIGEST_PREFIX:
        raise ConfigError(
            f"{ref!r} is too short to name an artifact: give at least {MIN_DIGEST_PREFIX} hex digits ({expected})."
        )
    if len(hex_) > 64:
        raise ConfigError(f"{ref!r} is too long: a sha256 digest has at most 64 hex digits ({expected}).")
    return hex_


def _artifact_digests(store: Store) -> list[str]:
    """Every artifact digest the repository names by its ``sha256-<hex>`` tag (what every push adds), sorted."""
    return sorted("sha256:" + m.group(1) for t in store.tags() if (m := _DIGEST_TAG.fullmatch(t)))


def expand_ref(store: Store, ref: str) -> str:
    """``ref`` with a digest prefix expanded to the one full artifact digest it names; a tag unchanged.

    Accepted: a tag; ``sha256:<hex>`` with 7 to 64 hex digits (any case); bare hex of at least 7 digits,
    unless a tag of exactly that name exists (the tag wins). Prefixes match artifact digests (the
    ``sha256-<hex>`` tag every push adds), in an OCI layout and in a registry alike; a full digest is
    returned as it is (it may also be a manifest digest). An ambiguous prefix is refused listing its
    matches; a prefix nothing has is a RegistryError listing what the repository holds.
    """
    hex_ = _digest_form(ref)
    if hex_ is None:
        return check_tag(ref)
    if ":" not in ref and store.get_manifest(check_tag(ref)) is not None:
        return ref  # a tag that merely looks like hex
    if len(hex_) == 64:
        return "sha256:" + hex_
    prefix = "sha256:" + hex_
    matches = [d for d in _artifact_digests(store) if d.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(
            f"{ref!r} is ambiguous in {store!r}: {len(matches)} artifacts have digests starting with {prefix}: "
            f"{', '.join(matches)}. Give more digits (or the whole digest)."
        )
    known = _artifact_digests(store)
    more = f" and {len(known) - 10} more" if len(known) > 10 else ""
    listed = ", ".join(d[:19] for d in known[:10]) + more
    raise RegistryError(
        f"No artifact in {store!r} has a digest starting with {prefix}. It holds: {listed or 'no artifacts'}. "
        "Push the artifact first (`mlci push`), or check the digest (`mlci status` lists what is tagged)."
    )


def resolve(store: Store, ref: str) -> str | None:
    """The manifest digest for a tag, an mlci digest or prefix (via its ``sha256-<hex>`` tag) or a manifest digest."""
    ref = expand_ref(store, ref)
    candidates = [digest_tag(ref), ref] if is_digest(ref) else [check_tag(ref)]
    for candidate in candidates:
        found = store.get_manifest(candidate)
        if found is not None:
            return found[2]
    return None


def _load_manifest(store: Store, ref: str) -> tuple[bytes, dict[str, Any]]:
    digest = resolve(store, ref)
    found = store.get_manifest(digest) if digest is not None else None
    if found is None:
        raise RegistryError(
            f"Nothing named {ref!r} in {store!r}. Its tags are: {', '.join(store.tags()) or 'none'}."
        )
    try:
        manifest = json.loads(found[0])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"The manifest {found[2]} in {store!r} is not valid JSON ({exc}).") from exc
    if not isinstance(manifest, dict):
        raise RegistryError(f"The manifest {found[2]} in {store!r} is not a JSON object.")
    return found[0], manifest


def _model_manifest_of(store: Store, ref: str) -> dict[str, Any]:
    _, manifest = _load_manifest(store, ref)
    if manifest.get("artifactType") != MODEL_ARTIFACT_TYPE:
        raise RegistryError(
            f"{ref!r} in {store!r} is not an mlci model: expected artifactType {MODEL_ARTIFACT_TYPE}, "
            f"got {manifest.get('artifactType')!r}."
        )
    return manifest


def _already_there(dest: Path, artifact_digest: str) -> bool:
    if not dest.exists():
        return False
    try:
        held = verify_artifact(dest)["digest"]
        check_models(dest)
    except MlciError:
        held = None
    if held == artifact_digest:
        return True
    raise RegistryError(
        f"'{dest}' already exists and does not hold {artifact_digest} (it holds {held or 'something else'}). "
        "Remove it or pull into another directory."
    )


def _model_layers(manifest: Mapping[str, Any], ref: str, store: Store) -> dict[str, tuple[str, int]]:
    """Each file's (digest, declared size), from layers that must be exactly the artifact's files."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise RegistryError(f"The manifest of {ref!r} in {store!r} has no list of layers; it is not an mlci model.")
    found: dict[str, tuple[str, int]] = {}
    for layer in layers:
        notes = layer.get("annotations")
        name = notes.get(TITLE, "") if isinstance(notes, dict) else ""
        if not isinstance(name, str) or _SAFE_NAME.fullmatch(name) is None or name in found:
            raise RegistryError(
                f"A layer of {ref!r} has an unsafe or repeated file name {name!r}; refusing to write it."
            )
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not is_digest(digest) or type(size) is not int or size < 0:
            raise RegistryError(
                f"The layer {name!r} of {ref!r} in {store!r} has no valid digest and size "
                f"(got {str(digest)[:80]!r} and {str(size)[:20]!r}); refusing it."
            )
        found[name] = (digest, size)
    extra, missing = sorted(set(found) - set(_FILES)), [n for n in _FILES if n not in found]
    if extra or missing:
        problems = [f"it has {', '.join(map(repr, extra))}, which no mlci artifact has"] if extra else []
        problems += [f"it lacks {', '.join(map(repr, missing))}"] if missing else []
        raise RegistryError(
            f"{ref!r} in {store!r} is not a whole mlci model: {'; '.join(problems)}. An mlci model has exactly "
            f"the layers {', '.join(sorted(_FILES))}; nothing was pulled. Re-push the artifact with `mlci push`."
        )
    for name, (_, size) in found.items():
        if size > MAX_FILE_BYTES[name]:
            raise RegistryError(
                f"{name} of {ref!r} in {store!r} declares {size:,} bytes, more than the {MAX_FILE_BYTES[name]:,} "
                "an mlci artifact's file may have (MAX_FILE_BYTES); refusing it."
            )
    return found


def pull_artifact(store: Store, ref: str, dest: Path) -> dict[str, Any]:
    """Download the artifact ``ref`` into ``dest`` (all or nothing), verified blob by blob; return its manifest."""
    manifest = _model_manifest_of(store, ref)
    notes = manifest.get("annotations")
    artifact_digest = str(notes.get(DIGEST_KEY, "")) if isinstance(notes, dict) else ""
    if _already_there(dest, artifact_digest):
        held: dict[str, Any] = verify_artifact(dest)
        return held
    layers = _model_layers(manifest, ref, store)
    with atomic_dir(dest) as tmp:
        for name in _FILES:
            digest, size = layers[name]
            try:
                with (tmp / name).open("xb") as out:
                    store.fetch_blob(digest, size, out)
            except RegistryError as exc:
                raise RegistryError(f"Cannot pull {name} of {ref!r}: {exc}") from exc
        try:
            pulled: dict[str, Any] = verify_artifact(tmp)
            check_models(tmp)
        except MlciError as exc:
            raise RegistryError(f"The artifact pulled as {ref!r} does not verify: {exc}") from exc
        if pulled["digest"] != artifact_digest:
            raise RegistryError(
                f"{ref!r} is annotated as {artifact_digest}, but its files make {pulled['digest']}. Re-push the artifact."
            )
    return pulled


def tag_artifact(store: Store, tag: str, ref: str) -> str:
    """Point ``tag`` at the already-pushed manifest ``ref`` (any form ``resolve`` accepts); return its digest."""
    data, manifest = _load_manifest(store, ref)
    return store.put_manifest(data, str(manifest.get("mediaType", OCI_MANIFEST)), check_tag(tag))


def tag_digest(store: Store, tag: str) -> str | None:
    """The mlci digest the tag points at (from the manifest's annotation), or None if the tag is absent."""
    found = store.get_manifest(check_tag(tag))
    if found is None:
        return None
    value = json.loads(found[0]).get("annotations", {}).get(DIGEST_KEY)
    return value if isinstance(value, str) else None


def put_document(store: Store, tag: str, document: Mapping[str, Any], kind: str) -> str:
    """Store a small JSON document as an OCI artifact under ``tag``; return the manifest digest."""
    if _KIND.fullmatch(kind) is None:
        raise ConfigError(f"Document kind {kind!r} is not valid: expected lowercase letters, digits and '-'.")
    check_tag(tag)
    body = canonical_json(dict(document))
    config = _descriptor(EMPTY_MEDIA_TYPE, EMPTY_DATA)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": f"application/vnd.mlci.{kind}.v1",
        "config": config,
        "layers": [_descriptor(f"application/vnd.mlci.{kind}.v1+json", body, f"{kind}.json")],
        "annotations": {KIND_KEY: kind},
    }
    data = canonical_json(manifest)
    _upload(store, {config["digest"]: EMPTY_DATA, digest_bytes(body): body})
    store.put_manifest(data, OCI_MANIFEST, digest_bytes(data))
    return store.put_manifest(data, OCI_MANIFEST, tag)


def get_document(store: Store, tag: str) -> dict[str, Any] | None:
    """The JSON document stored under ``tag``, or None if the tag is absent."""
    found = store.get_manifest(check_tag(tag))
    if found is None:
        return None
    manifest = json.loads(found[0])
    kind = manifest.get("annotations", {}).get(KIND_KEY)
    layers = manifest.get("layers", [])
    if (
        not isinstance(kind, str)
        or manifest.get("artifactType") != f"application/vnd.mlci.{kind}.v1"
        or len(layers) != 1
    ):
        raise RegistryError(
            f"{tag!r} in {store!r} is not an mlci document (artifactType {manifest.get('artifactType')!r})."
        )
    value = json.loads(store.get_blob(layers[0]["digest"]))
    if not isinstance(value, dict):
        raise RegistryError(f"The document under {tag!r} in {store!r} is not a JSON object.")
    return value
