"""The storage contract for one OCI repository, and the digest/tag checks every store applies."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from mlci.canonical import sha256_bytes
from mlci.errors import ConfigError, RegistryError

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Store",
    "check_digest",
    "check_tag",
    "digest_bytes",
    "is_digest",
    "verify_blob",
]

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

    def get_blob(self, digest: str) -> bytes:
        """The bytes of blob ``digest``, verified against it."""
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
    actual = digest_bytes(data)
    if actual != digest:
        raise RegistryError(
            f"Blob {digest} read from {where} is corrupted: expected digest {digest}, got {actual}. "
            "The registry's storage is corrupted; re-push the artifact."
        )
    return data
