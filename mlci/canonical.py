"""Canonical JSON and sha256 helpers: the basis of every digest mlci computes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_fill", "atomic_write", "canonical_json", "digest_of", "sha256_bytes", "sha256_file", "write_json"]

_CHUNK = 1 << 20


def _normalise(value: Any) -> Any:
    """Turn numpy scalars, tuples and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: equal values give equal bytes."""
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def digest_of(value: Any) -> str:
    """Hex sha256 of the canonical JSON form of ``value``."""
    return sha256_bytes(canonical_json(value))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as canonical JSON followed by a newline (stable bytes, diff-friendly enough)."""
    path.write_bytes(canonical_json(value) + b"\n")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    atomic_fill(path, lambda fh: fh.write(data))


def atomic_fill(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Let ``fill`` write ``path``'s new content (streamed, never whole in memory), atomically.

    The bytes go to a fresh temporary file beside ``path`` (created exclusively, so a planted symlink is
    never followed), are flushed to disk, and the file is renamed over ``path``. If anything fails (a full
    disk, an interrupt, ``fill`` refusing what it reads) the temporary file is removed and ``path`` is
    untouched.
    """
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        with tmp.open("xb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
