"""The prediction log: one JSON line per successful inference, for the monitor.

The request path serializes its record with orjson (a few microseconds, no I/O) and queues the bytes
(small lines share one buffer; a batch's line is queued as it is); a background thread writes the queue
every ``flush_interval_s`` (sooner once 4 MiB are waiting), and :meth:`PredictionLog.close` writes
whatever is left (the server calls it on shutdown, after in-flight requests finish). Serializing
in the writer thread instead was measured slower: it fights the event loop for the GIL and stalls it
for milliseconds at a time.

File layout in ``directory``: ``predictions.jsonl`` is the file being written; when it would exceed
``max_bytes`` it is renamed ``predictions-<UTC time>-<seq>.jsonl`` (never written again) and a new one
starts; rotation falls between lines (a single line longer than ``max_bytes`` gets a file of its own). ``keep`` > 0 deletes the oldest rotated files beyond that many.

One line (``ts`` is Unix time in seconds; keys in this order, ``numeric`` last)::

    {"id": "...", "ts": 1767225600.123456, "model": "name", "digest": "sha256:...", "rows": 2,
     "inputs": {"<categorical feature>": ["a", ""], ...},
     "outputs": {"label": {"classes": ["benign", "malignant"], "dtype": "|u1", "shape": [2], "b64": "AAE="},
                 "probabilities": {"dtype": "<f8", "shape": [2, 2], "b64": "..."}},
     "numeric": {"dtype": "<f4", "shape": [30, 2], "b64": "..."}}

``numeric`` is the float32 matrix the model saw, feature-major: one row per numeric feature (in the
schema order of the manifest that ``digest`` names), one column per request row, a missing value NaN. Numeric arrays are written as *packed
arrays* (:func:`pack_array`: dtype, shape and the little-endian bytes in base64) because formatting
floats as JSON text is what a log line cost: 640 µs for a 1024-row, 30-feature batch with orjson,
against 2 µs for base64 with pybase64 (SIMD), and reading it back is a ``frombuffer`` instead of a
float parse. Class labels the server knows by index are written as packed indices plus the class names
(``{"classes": [...], "dtype": "|u1", ...}``; :func:`unpack_array` returns the names); other strings
(categorical inputs, labels of other models) stay JSON lists, a missing category ``""``.
:func:`unpack_array` reads a packed array back, checking it. Records written before packing existed
carry every feature as a JSON list under ``inputs`` (``null`` for missing); the monitor reads both.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pybase64

__all__ = ["ACTIVE_FILE", "PredictionLog", "pack_array", "pack_labels", "read_lines", "unpack_array"]

ACTIVE_FILE = "predictions.jsonl"


_OPTIONS = orjson.OPT_APPEND_NEWLINE
_LARGE_LINE = 16 * 1024  # lines at least this long are queued as they are, not copied into the buffer
_WAKE_BYTES = 4 * 1024 * 1024  # queued bytes that wake the writer before its next tick
_PACK_OUTPUTS_FROM = 64  # outputs with fewer values are written as plain JSON lists
_PACKABLE_KINDS = frozenset("fiub")  # float, signed and unsigned int, bool: fixed-size, no objects


def pack_array(array: np.ndarray, *, data: bool = True) -> dict[str, Any]:
    """A numeric array as ``{"dtype": "<f4", "shape": [rows, cols], "b64": "<base64 of its C-order bytes>"}``
    (``data=False``: ``"b64"`` left empty, for a writer that streams the bytes into it itself)."""
    contiguous = np.ascontiguousarray(array)
    return {
        "dtype": contiguous.dtype.str,
        "shape": list(contiguous.shape),
        "b64": pybase64.b64encode_as_string(contiguous.data) if data else "",
    }


def pack_labels(classes: Sequence[str], index: np.ndarray) -> dict[str, Any]:
    """Class labels as their indices (a packed array of the smallest unsigned type) plus the class names."""
    small = index.astype(
        np.uint8 if len(classes) <= 256 else np.uint16 if len(classes) <= 65536 else np.int64
    )
    packed = pack_array(small)
    packed["classes"] = list(classes)
    return packed


def _output(array: np.ndarray, indexed: tuple[Sequence[str], np.ndarray] | None) -> Any:
    """One output as the log writes it: plain JSON when small (cheaper than packing), else packed labels
    (when their class indices are known), a packed numeric array, or a list of strings."""
    if indexed is not None:
        classes, index = indexed
        if index.size < _PACK_OUTPUTS_FROM:
            return np.array(classes, dtype=object).take(index).tolist()
        return pack_labels(classes, index)
    if array.size < _PACK_OUTPUTS_FROM:
        return array.tolist()
    return pack_array(array) if array.dtype.kind in _PACKABLE_KINDS else array.tolist()


def unpack_array(packed: Any) -> np.ndarray:
    """The array a :func:`pack_array` document holds; ValueError saying what is wrong with a malformed one."""
    if not isinstance(packed, dict) or not {"dtype", "shape", "b64"} <= packed.keys():
        raise ValueError(
            f"expected a packed array {{dtype, shape, b64}}, got {type(packed).__name__} "
            f"{sorted(packed) if isinstance(packed, dict) else ''}".rstrip()
        )
    try:
        dtype = np.dtype(packed["dtype"]) if isinstance(packed["dtype"], str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in _PACKABLE_KINDS:
        raise ValueError(f"packed array dtype {packed['dtype']!r} is not a numeric dtype such as '<f4'")
    shape = packed["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"packed array shape {shape!r} is not a list of non-negative integers")
    try:
        raw = pybase64.b64decode(packed["b64"], validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"packed array data is not base64 ({exc})") from None
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"packed array holds {len(raw)} bytes, but dtype {dtype.str} and shape {shape} need {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    classes = packed.get("classes")
    if classes is None:
        return array
    if not isinstance(classes, list) or not all(type(c) is str for c in classes):
        raise ValueError(f"packed labels' classes must be a list of strings, got {classes!r:.80}")
    if dtype.kind not in "iu":
        raise ValueError(f"packed labels must be integer indices, got dtype {dtype.str}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= len(classes)):
        raise ValueError(
            f"packed labels index {int(array.min())}..{int(array.max())} is outside the {len(classes)} classes"
        )
    names: np.ndarray = np.array(classes, dtype=object).take(array)
    return names


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
        max_pending_bytes: int = 256 * 1024 * 1024,
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
        self.max_pending_bytes = max_pending_bytes  # batches are large: bound the queue's memory too
        self._on_write = on_write
        self._on_drop = on_drop
        # Small lines go into one growing buffer (thousands of ~1 KiB objects alive between flushes cost
        # measurable page-fault time); a large line (a batch) is queued as it is, never copied again. None
        # in the queue marks a rotation, decided here from line sizes so that flush never re-splits lines.
        # The lock is uncontended except at the swap.
        self._queue: list[bytes | bytearray | tuple[bytes, bytes, bytes] | None] = []
        self._tail = bytearray()
        self._pending = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._io_lock = threading.Lock()
        self._seq = 0
        self.written = 0
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / ACTIVE_FILE
        self._file = self._path.open("ab", buffering=0)  # unbuffered: flush() writes with os.writev
        self._planned = self._file.tell()  # bytes the active file will hold once the queue is written
        self._thread = threading.Thread(target=self._loop, name="mlci-predlog", daemon=True)
        self._thread.start()

    def append(
        self,
        request_id: str,
        ts: float,
        rows: int,
        numeric: np.ndarray | None,
        categories: dict[str, list[str]],
        outputs: dict[str, np.ndarray],
        labels: dict[str, tuple[Sequence[str], np.ndarray]] | None = None,
    ) -> bool:
        """Serialize one record and queue it; False if the queue is full (``max_pending`` records or
        ``max_pending_bytes``: the disk cannot keep up) or the log closed: the record is dropped and counted.

        ``numeric`` is the ``(n_numeric, rows)`` matrix the model saw (None without numeric features),
        ``categories`` the categorical columns as strings, ``outputs`` the model's outputs: numeric ones are
        packed, string ones written as (nested) lists in their tensor shape, unless ``labels`` gives their
        class names and indices (then :func:`pack_labels`: 1 byte a row instead of the name in JSON).
        Outputs of fewer than 64 values (a single row's) stay plain JSON lists: cheaper to write than to pack.
        """
        record: dict[str, Any] = {
            "id": request_id,
            "ts": ts,
            "model": self.model,
            "digest": self.digest,
            "rows": rows,
            "inputs": categories,
            "outputs": {
                name: _output(array, labels.get(name) if labels else None) for name, array in outputs.items()
            },
        }
        entry: bytes | tuple[bytes, bytes, bytes]
        if numeric is None:
            entry = orjson.dumps(record, option=_OPTIONS)
            size = len(entry)
        elif numeric.nbytes < _LARGE_LINE:
            record["numeric"] = pack_array(numeric)
            entry = orjson.dumps(record, option=_OPTIONS)
            size = len(entry)
        else:
            # A batch: its base64 is queued as pybase64 made it and written between the line's two JSON
            # halves (one writev), never copied into a line. "numeric" is the last key: the line ends in
            # its (empty) "b64" string, which the data goes into.
            record["numeric"] = pack_array(numeric, data=False)
            head = orjson.dumps(record)
            data = pybase64.b64encode(np.ascontiguousarray(numeric).data)
            entry = (head[:-3], data, head[-3:] + b"\n")  # head ends with '"b64":""}}'
            size = len(head) + len(data) + 1
        with self._lock:
            if (
                not self._closed
                and self._pending < self.max_pending
                and self._pending_bytes + size <= self.max_pending_bytes
            ):
                if self._planned and self._planned + size > self.max_bytes:
                    self._end_tail()
                    self._queue.append(None)
                    self._planned = 0
                if type(entry) is bytes and size < _LARGE_LINE:
                    self._tail += entry
                else:
                    self._end_tail()
                    self._queue.append(entry)
                self._planned += size
                self._pending += 1
                self._pending_bytes += size
                if self._pending_bytes >= _WAKE_BYTES:
                    self._wake.set()  # a heavy stream: write now rather than hold megabytes until the tick
                return True
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)
        return False

    def flush(self) -> None:
        """Write every queued line now (called from the writer thread and on close)."""
        with self._io_lock:
            with self._lock:
                self._end_tail()
                queue, self._queue = self._queue, []
                count, self._pending, self._pending_bytes = self._pending, 0, 0
            if not count:
                return
            pieces: list[bytes | bytearray] = []
            for chunk in queue:
                if chunk is None:
                    _write_all(self._file.fileno(), pieces)
                    pieces = []
                    self._rotate()
                elif isinstance(chunk, tuple):
                    pieces.extend(chunk)
                else:
                    pieces.append(chunk)
            _write_all(self._file.fileno(), pieces)
            self.written += count
            if self._on_write is not None:
                self._on_write(count)

    def _end_tail(self) -> None:
        """Queue the small lines gathered so far as one chunk (call with ``_lock`` held)."""
        if self._tail:
            self._queue.append(self._tail)
            self._tail = bytearray()

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
        self._file = self._path.open("ab", buffering=0)
        if self.keep:
            rotated = sorted(self.directory.glob("predictions-*.jsonl"))
            for old in rotated[: -self.keep]:
                old.unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()  # close() sets _closed before waking us, so the loop still ends
            try:
                self.flush()
            except Exception as exc:  # a full disk must not kill the writer; the records stay counted as lost
                print(f"mlci serve: prediction log write failed: {exc!r}", file=sys.stderr)
                time.sleep(self.flush_interval_s)


_IOV_MAX = 1024  # buffers per writev call (Linux's limit)


def _write_all(fd: int, pieces: list[bytes | bytearray]) -> None:
    """Write ``pieces`` in order with as few ``writev`` calls as possible, resuming after a short write."""
    views = [memoryview(p) for p in pieces if p]
    while views:
        batch = views[:_IOV_MAX]
        written = os.writev(fd, batch)
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        views = views[done:]
        if written:
            views[0] = views[0][written:]


def read_lines(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``, rotated files first (oldest first), then the active file."""
    files = [*sorted(directory.glob("predictions-*.jsonl")), directory / ACTIVE_FILE]
    records: list[dict[str, Any]] = []
    for path in files:
        if path.is_file():
            records.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line)
    return records
