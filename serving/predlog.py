"""The prediction log: one JSON line per successful inference, for the monitor.

The request path serializes its record with orjson (a few microseconds, no I/O) and appends the bytes to
a buffer; a background thread writes the queue every ``flush_interval_s``, and :meth:`PredictionLog.close`
writes whatever is left (the server calls it on shutdown, after in-flight requests finish). Serializing
in the writer thread instead was measured slower: it fights the event loop for the GIL and stalls it
for milliseconds at a time.

File layout in ``directory``: ``predictions.jsonl`` is the file being written; when it would exceed
``max_bytes`` it is renamed ``predictions-<UTC time>-<seq>.jsonl`` (never written again) and a new one
starts. ``keep`` > 0 deletes the oldest rotated files beyond that many.

One line (``ts`` is Unix time in seconds)::

    {"id": "...", "ts": 1767225600.123456, "model": "name", "digest": "sha256:...", "rows": 2,
     "inputs": {"<feature>": [v1, v2], ...}, "outputs": {"label": ["a", "b"], "probabilities": [[.9, .1], [.2, .8]]}}

Inputs are columns in schema order, as the model saw them (a missing value is ``null``); outputs keep
their tensor shape (one entry per row).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ACTIVE_FILE", "PredictionLog", "read_lines"]

ACTIVE_FILE = "predictions.jsonl"


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


class PredictionLog:
    """Buffered JSON Lines writer with size rotation; ``append`` never blocks on I/O."""

    def __init__(
        self,
        directory: Path,
        *,
        model: str,
        digest: str,
        max_bytes: int = 64 * 1024 * 1024,
        keep: int = 0,
        flush_interval_s: float = 0.2,
        max_pending: int = 200_000,
        on_write: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.model = model
        self.digest = digest
        self.max_bytes = max_bytes
        self.keep = keep
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self._on_write = on_write
        self._on_drop = on_drop
        # One growing buffer instead of a queue of line objects: thousands of ~1 KiB objects alive between
        # flushes cost measurable page-fault time; the lock is uncontended except at the swap.
        self._buffer = bytearray()
        self._pending = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._io_lock = threading.Lock()
        self._seq = 0
        self.written = 0
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / ACTIVE_FILE
        self._file = self._path.open("ab")
        self._size = self._file.tell()
        self._thread = threading.Thread(target=self._loop, name="mlci-predlog", daemon=True)
        self._thread.start()

    def append(
        self, request_id: str, ts: float, rows: int, inputs: dict[str, Any], outputs: dict[str, Any]
    ) -> bool:
        """Serialize one record and queue it; False if the queue is full or the log closed (record dropped).

        ``inputs``/``outputs`` values are lists or numeric numpy arrays (orjson writes those natively).
        """
        line = orjson.dumps(
            {
                "id": request_id,
                "ts": ts,
                "model": self.model,
                "digest": self.digest,
                "rows": rows,
                "inputs": inputs,
                "outputs": outputs,
            },
            option=_OPTIONS,
        )
        with self._lock:
            if not self._closed and self._pending < self.max_pending:
                self._buffer += line
                self._pending += 1
                return True
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)
        return False

    def flush(self) -> None:
        """Write every queued line now (called from the writer thread and on close)."""
        with self._io_lock:
            with self._lock:
                buffer, self._buffer = self._buffer, bytearray()
                count, self._pending = self._pending, 0
            if not count:
                return
            if self._size + len(buffer) <= self.max_bytes:
                self._file.write(buffer)
                self._size += len(buffer)
            else:
                for line in buffer.splitlines(keepends=True):  # orjson escapes newlines inside strings
                    if self._size and self._size + len(line) > self.max_bytes:
                        self._rotate()
                    self._file.write(line)
                    self._size += len(line)
            self._file.flush()
            self.written += count
            if self._on_write is not None:
                self._on_write(count)

    def close(self) -> None:
        """Stop the writer thread, write what is queued, close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()
        with self._io_lock:
            self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._path.rename(self.directory / f"predictions-{stamp}-{self._seq:06d}.jsonl")
        self._file = self._path.open("ab")
        self._size = 0
        if self.keep:
            rotated = sorted(self.directory.glob("predictions-*.jsonl"))
            for old in rotated[: -self.keep]:
                old.unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            try:
                self.flush()
            except Exception as exc:  # a full disk must not kill the writer; the records stay counted as lost
                print(f"mlci serve: prediction log write failed: {exc!r}", file=sys.stderr)
                time.sleep(self.flush_interval_s)


def read_lines(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``, rotated files first (oldest first), then the active file."""
    files = [*sorted(directory.glob("predictions-*.jsonl")), directory / ACTIVE_FILE]
    records: list[dict[str, Any]] = []
    for path in files:
        if path.is_file():
            records.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line)
    return records
