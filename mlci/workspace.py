"""The workspace under `.mlci/`: a content-addressed stage cache and artifact store, written atomically."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
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

    def reports_dir(self, digest: str) -> Path:
        """Where the smoke report and gate verdict of artifact ``digest`` live (`smoke.json`, `verdict.json`).

        Beside the artifact, not in it: an artifact directory holds exactly the artifact's files. `mlci run`
        and the standalone `mlci smoke`/`mlci gate` write here, so each finds what the other wrote.
        """
        return self.root / "reports" / digest.replace(":", "-")

    @contextmanager
    def lock(self, on_wait: Callable[[int | None], None] = lambda _pid: None) -> Iterator[None]:
        """Hold the workspace for the block, waiting while another process holds it.

        A run that rebuilds a stage (``--no-cache``) deletes the entry another run may be reading; one
        run at a time per workspace is what makes that safe. ``on_wait`` hears the holder's pid (None if
        unknown) before the wait. The lock is an fcntl lock on `.mlci/lock`, which the kernel releases
        when its holder exits or is killed, so a crashed run never leaves the workspace locked.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                on_wait(int(holder) if holder.isdigit() else None)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # a waiter never reads a pid that no longer holds the lock
        finally:
            os.close(fd)  # releases the lock

    @property
    def runs_file(self) -> Path:
        """The run-record log (JSON Lines)."""
        return self.root / "runs.jsonl"
