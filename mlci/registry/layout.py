"""An OCI image-layout directory as a store: the spec's on-disk format, readable by skopeo and oras.

``oci-layout`` + ``index.json`` + ``blobs/sha256/<hex>``. Tags are index entries annotated with
``org.opencontainers.image.ref.name``. Every manifest also keeps one untagged index entry, so it stays
reachable by digest (and safe from garbage collection) after its tags move away. Writes go to a temporary
file and are renamed into place; index.json is rewritten under an exclusive ``flock`` on ``oci-layout``.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from mlci.canonical import atomic_fill as _atomic_fill
from mlci.canonical import atomic_write as _atomic_write
from mlci.canonical import canonical_json
from mlci.errors import RegistryError
from mlci.registry.store import (
    MAX_MANIFEST_BYTES,
    MAX_SMALL_BLOB_BYTES,
    OCI_INDEX,
    check_digest,
    check_tag,
    copy_verified,
    digest_bytes,
    file_chunks,
    is_digest,
    too_large,
    verify_blob,
)

__all__ = ["LayoutStore"]

LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"


class LayoutStore:
    """One repository kept as an OCI image-layout directory at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LayoutStore({str(self.root)!r})"

    def close(self) -> None:
        """Nothing to release (each operation opens and closes its files); here for symmetry with HttpStore."""

    def __enter__(self) -> LayoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- layout files -------------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / check_digest(digest).split(":", 1)[1]

    def _ensure(self) -> None:
        """Create the layout if absent; refuse a directory that is something else."""
        marker = self.root / "oci-layout"
        if marker.is_file():
            return
        # Another process may be creating the same layout right now: its blobs/ and temporary files are fine.
        strangers = (
            [p.name for p in self.root.iterdir() if p.name != "blobs" and not p.name.startswith(".tmp-")]
            if self.root.is_dir()
            else []
        )
        if (strangers and not marker.is_file()) or (self.root.exists() and not self.root.is_dir()):
            raise RegistryError(
                f"'{self.root}' exists but is not an OCI image layout (it has no oci-layout file). "
                "Point [registry] url at an empty directory or an existing layout."
            )
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        # Create, never replace: oci-layout is also the lock file, and a writer holding a lock on the
        # old inode must not share the layout with one that locked a replacement.
        tmp = self.root / f".tmp-oci-layout-{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        try:
            os.link(tmp, marker)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the layout for a read-modify-write of index.json."""
        self._ensure()
        with (self.root / "oci-layout").open("rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        if not path.is_file():
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if path.stat().st_size > MAX_SMALL_BLOB_BYTES:
            raise too_large(
                "index.json", f"'{self.root}'", MAX_SMALL_BLOB_BYTES, "mlci's limit for an OCI layout's index",
                f"it has {path.stat().st_size:,}", "The layout is damaged or not one mlci wrote.",
            )
        try:
            index = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"'{path}' is not valid JSON ({exc}); the layout is damaged.") from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise RegistryError(f"'{path}' has no 'manifests' list; it is not an OCI image index.")
        return index

    def _descriptor(self, ref: str) -> dict[str, Any] | None:
        """The index entry for a tag, or any entry for a digest."""
        for entry in self._read_index()["manifests"]:
            if is_digest(ref) and entry.get("digest") == ref:
                return dict(entry)
            if not is_digest(ref) and entry.get("annotations", {}).get(REF_NAME) == ref:
                return dict(entry)
        return None

    # -- Store --------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        """Whether the blob file exists."""
        return self._blob_path(digest).is_file()

    def put_blob(self, data: bytes, digest: str) -> None:
        """Write the blob (after checking ``data`` hashes to ``digest``); a no-op if present."""
        actual = digest_bytes(data)
        if actual != check_digest(digest):
            raise RegistryError(f"Refusing to store a blob as {digest}: its bytes hash to {actual}.")
        self._ensure()
        path = self._blob_path(digest)
        if not path.is_file():
            _atomic_write(path, data)

    def put_blob_file(self, path: Path, digest: str) -> None:
        """Copy the file in as the blob (hashed while copied, renamed into place once it checks); a no-op if present."""
        target = self._blob_path(digest)
        self._ensure()
        if not target.is_file():
            size = path.stat().st_size
            _atomic_fill(target, lambda fh: copy_verified(file_chunks(path), digest, size, fh, f"'{path}'"))

    def _existing_blob(self, digest: str) -> Path:
        path = self._blob_path(digest)
        if not path.is_file():
            raise RegistryError(
                f"Blob {digest} is missing from the OCI layout '{self.root}'. "
                "The registry's storage is corrupted; re-push the artifact."
            )
        return path

    def get_blob(self, digest: str, max_size: int = MAX_SMALL_BLOB_BYTES) -> bytes:
        """The blob's bytes, verified; refused unread when the file is larger than ``max_size``."""
        path = self._existing_blob(digest)
        size = path.stat().st_size
        if size > max_size:
            raise too_large(
                f"Blob {digest}", f"'{path}'", max_size, "the most mlci reads whole for this kind of blob",
                f"it has {size:,}", "The layout holds something other than an mlci manifest or document here.",
            )
        return verify_blob(path.read_bytes(), digest, f"'{path}'")

    def fetch_blob(self, digest: str, size: int, out: BinaryIO) -> None:
        """Copy the blob to ``out`` piece by piece, checking its size and digest."""
        path = self._existing_blob(digest)
        copy_verified(file_chunks(path), digest, size, out, f"'{path}'")

    def put_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        """Store the manifest blob and point an index entry (tagged, or untagged for a digest) at it."""
        digest = digest_bytes(data)
        if is_digest(ref) and ref != digest:
            raise RegistryError(f"Cannot store a manifest as {ref}: its bytes hash to {digest}.")
        tag = None if is_digest(ref) else check_tag(ref)
        self.put_blob(data, digest)
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        artifact_type = json.loads(data).get("artifactType")
        if isinstance(artifact_type, str):
            entry["artifactType"] = artifact_type
        with self._locked():
            index = self._read_index()
            manifests = [
                m for m in index["manifests"] if tag is None or m.get("annotations", {}).get(REF_NAME) != tag
            ]
            if not any(
                m.get("digest") == digest and REF_NAME not in m.get("annotations", {}) for m in manifests
            ):
                manifests.append(dict(entry))
            if tag is not None:
                manifests.append({**entry, "annotations": {REF_NAME: tag}})
            index["manifests"] = manifests
            _atomic_write(self.root / "index.json", canonical_json(index))
        return digest

    def get_manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) for a tag or digest; None when absent."""
        entry = self._descriptor(ref if is_digest(ref) else check_tag(ref))
        if entry is None:
            if not is_digest(ref) or not self.has_blob(ref):
                return None
            data = self.get_blob(ref, MAX_MANIFEST_BYTES)
            try:
                media_type = json.loads(data).get("mediaType", "")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                media_type = ""  # not a manifest: the caller's parse says so, with the ref in the message
            return data, str(media_type), ref
        data = self.get_blob(str(entry.get("digest")), MAX_MANIFEST_BYTES)
        return data, str(entry.get("mediaType", "")), str(entry["digest"])

    def tags(self) -> list[str]:
        """Sorted ref.name annotations of index.json."""
        names = {m.get("annotations", {}).get(REF_NAME) for m in self._read_index()["manifests"]}
        return sorted(n for n in names if isinstance(n, str))
