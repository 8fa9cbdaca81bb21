"""The workspace under `.mlci/`: a content-addressed stage cache and artifact store, written atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Workspace", "atomic_dir"]


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; rename it into place only if the block succeeds.

    A failed or interrupted stage leaves nothing at ``final``, so a half-written output can never be
    mistaken for a cache hit or an artifact.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            # Same key, same content: another run got there first. Keep theirs.
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Workspace:
    """Paths inside the workspace directory (default `.mlci/` beside `mlci.toml`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stage_dir(self, stage: str, key: str) -> Path:
        """Where the output of ``stage`` for input key ``key`` lives."""
        return self.root / "cache" / stage / key

    def artifact_dir(self, digest: str) -> Path:
        """Where the artifact with ``digest`` (``sha256:<hex>``) lives in the local store."""
        return self.root / "artifacts" / digest.replace(":", "-")

    @property
    def runs_file(self) -> Path:
        """The run-record log (JSON Lines)."""
        return self.root / "runs.jsonl"
