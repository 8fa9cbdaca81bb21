"""The storage contract for one OCI repository, and the digest/tag checks every store applies."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from mlci.canonical import sha256_bytes
from mlci.errors import ConfigError, RegistryError

__all__ = [
    "CHUNK_BYTES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_BYTES",
    "MAX_SMALL_BLOB_BYTES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Store",
    "check_digest",
    "check_tag",
    "copy_verified",
    "digest_bytes",
    "file_chunks",
    "is_digest",
    "read_capped",
    "too_large",
    "verify_blob",
    "verify_blob_digest",
]

# What a store reads whole into memory, at most. Registries refuse manifests past 4 MiB (distribution's
# own limit); the small blobs read whole are JSON documents (promotion history, verdicts).
MAX_MANIFEST_BYTES = 4 << 20
MAX_SMALL_BLOB_BYTES = 64 << 20
# Files and downloads move in pieces of this size: memory stays flat whatever the blob's size.
CHUNK_BYTES = 1 << 20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# What we ask a registry for: OCI first, Docker's schema 2 so that an ordinary image tag still answers.
MANIFEST_MEDIA_TYPES = (
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Registry tag grammar, narrowed to what the OCI layout's ref.name grammar also accepts
# (no leading or trailing separator), so one tag is valid in both kinds of store.
_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")


@runtime_checkable
class Store(Protocol):
    """One repository of content-addressed blobs and manifests, with tags that point at manifests."""

    def has_blob(self, digest: str) -> bool:
        """Whether the blob ``digest`` is already stored."""
        ...

    def put_blob(self, data: bytes, digest: str) -> None:
        """Store ``data`` under ``digest`` (checked first)."""
        ...

    def put_blob_file(self, path: Path, digest: str) -> None:
        """Store the file at ``path`` under ``digest``, read piece by piece (never whole), checked against it."""
        ...

    def get_blob(self, digest: str, max_size: int = MAX_SMALL_BLOB_BYTES) -> bytes:
        """The bytes of blob ``digest``, verified against it; refused past ``max_size`` bytes."""
        ...

    def fetch_blob(self, digest: str, size: int, out: BinaryIO) -> None:
        """Write blob ``digest`` to ``out`` piece by piece: exactly ``size`` bytes or refused, verified."""
        ...

    def put_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        """Store a manifest under a tag or its own digest; return its digest."""
        ...

    def get_manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) for a tag or digest, or None if there is none."""
        ...

    def tags(self) -> list[str]:
        """Every tag in the repository, sorted."""
        ...


def file_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in CHUNK_BYTES pieces."""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + sha256_bytes(data)


def is_digest(ref: str) -> bool:
    """Whether ``ref`` is a ``sha256:<64 hex>`` digest (as opposed to a tag)."""
    return _DIGEST.fullmatch(ref) is not None


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise."""
    if not is_digest(digest):
        raise RegistryError(
            f"Expected a digest of the form 'sha256:<64 lowercase hex>', got {digest!r}. "
            "Only sha256 digests are supported."
        )
    return digest


def check_tag(tag: str) -> str:
    """Return ``tag`` if both registries and OCI layouts accept it, else raise (a usage error)."""
    if _TAG.fullmatch(tag) is None:
        raise ConfigError(
            f"{tag!r} is not a valid tag: expected 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit (e.g. 'candidate', 'v1.2')."
        )
    return tag


def verify_blob(data: bytes, digest: str, where: str) -> bytes:
    """Return ``data`` if it hashes to ``digest``; otherwise the storage at ``where`` is corrupted."""
    verify_blob_digest(digest_bytes(data), digest, where)
    return data


def verify_blob_digest(actual: str, digest: str, where: str) -> None:
    """Raise unless the bytes read from ``where``, which hash to ``actual``, are blob ``digest``."""
    if actual != digest:
        raise RegistryError(
            f"Blob {digest} read from {where} is corrupted: expected digest {digest}, got {actual}. "
            "The registry's storage is corrupted; re-push the artifact."
        )


DECLARED = "the size its manifest declares"
SERVES_OTHER = "The registry serves something other than what its manifest lists; refusing it."


def too_large(what: str, where: str, limit: int, why: str, got: str, fix: str) -> RegistryError:
    """The error for content past a limit: what was expected (``limit``, ``why``), what came, what to do."""
    return RegistryError(f"{what} from {where} is larger than {limit:,} bytes ({why}): {got}. {fix}")


def read_capped(chunks: Iterable[bytes], limit: int, what: str, where: str, why: str, fix: str) -> bytes:
    """The bytes of ``chunks``, refused (see :func:`too_large`) as soon as they pass ``limit``."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise too_large(what, where, limit, why, f"stopped reading after {len(data):,}", fix)
    return bytes(data)


def copy_verified(chunks: Iterable[bytes], digest: str, size: int, out: BinaryIO, where: str) -> None:
    """Write ``chunks`` to ``out`` while hashing them: stop as soon as they pass ``size`` bytes, then
    check the count and the digest. The caller discards ``out`` on error."""
    hasher = hashlib.sha256()
    count = 0
    for chunk in chunks:
        count += len(chunk)
        if count > size:
            raise too_large(f"Blob {digest}", where, size, DECLARED, f"stopped reading after {count:,}", SERVES_OTHER)
        hasher.update(chunk)
        out.write(chunk)
    if count != size:
        raise RegistryError(
            f"Blob {digest} from {where} has {count:,} bytes; its manifest declares {size:,}. "
            "The registry's storage is corrupted or the transfer was cut; pull again or re-push the artifact."
        )
    verify_blob_digest("sha256:" + hasher.hexdigest(), digest, where)
