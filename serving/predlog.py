"""The prediction log: one JSON line per successful inference for the monitor, large arrays in a blob file.

The request path serializes its record with orjson (a few microseconds, no I/O) and queues the bytes
(small lines share one buffer; a batch's arrays are queued as they are, never copied); a background
thread writes the queue every ``flush_interval_s`` (sooner once 4 MiB are waiting), and
:meth:`PredictionLog.close` writes whatever is left (the server calls it on shutdown, after in-flight
requests finish). Serializing in the writer thread instead was measured slower: it fights the event loop
for the GIL and stalls it for milliseconds at a time.

Files in ``directory``, one *segment* at a time:

- ``predictions.jsonl``: the lines of the segment being written. When the segment (its lines and its
  blob file together) would exceed ``max_bytes`` the file is renamed ``<stem>.jsonl``, never written
  again, and a new segment starts; rotation falls between lines (a single record larger than
  ``max_bytes`` gets a segment of its own). ``<stem>`` is ``predictions-<UTC time the segment
  started>-<seq>``, so the rotated files sort oldest first.
- ``<stem>.bin``: the segment's *blob file*, created when its first large array arrives: a 64-byte header
  (``MLCIBLOB`` and the file's own name), then the arrays of at least 4 KiB (a batch's numeric matrix
  and outputs) as raw little-endian bytes, each at a 64-byte aligned offset. A line points at its arrays
  by file name and offset, and is written only after them, so a reader that has a complete line can read
  its arrays. Raw bytes are 25% fewer than base64, and the server writes them without encoding them.
- ``keep`` > 0 deletes the oldest rotated segments beyond that many, the ``.jsonl`` and the ``.bin``. A
  deleted segment's blob file is *recycled* instead: renamed to the new segment's blob file, its header
  rewritten, and overwritten from the start (as PostgreSQL recycles WAL segments): writing over pages
  the file already has costs a quarter of the CPU of appending to a new file (12 against 45 µs per
  131 KiB here). Bytes past the last array written are stale and never referenced. A reader that was
  still reading a deleted segment notices: :class:`BlobReader` checks the header after every read.
- A server that starts beside a non-empty ``predictions.jsonl`` (a previous run's) rotates it first,
  under its blob file's stem, so that a segment's lines and its blob file always go together.

One line (``ts`` is Unix time in seconds; keys in this order)::

    {"id": "...", "ts": 1767225600.123456, "model": "name", "digest": "sha256:...", "rows": 1024,
     "synthetic": false, "inputs": {"<categorical feature>": ["a", "", ...], ...},
     "outputs": {"label": {"dtype": "|u1", "shape": [1024], "b64": "AAE...", "classes": ["benign", "malignant"]},
                 "probabilities": {"dtype": "<f4", "shape": [1024, 2], "blob": ["predictions-...-000003.bin", 122944]}},
     "numeric": {"dtype": "<f4", "shape": [30, 1024], "blob": ["predictions-...-000003.bin", 64]}}

``numeric`` is the float32 matrix the model saw, feature-major: one row per numeric feature (in the
schema order of the manifest that ``digest`` names), one column per request row, a missing value NaN.
Numeric arrays are written as *packed arrays* (:func:`pack_array`: dtype, shape and the little-endian
bytes, in base64 under ``"b64"`` when small, in the blob file under ``"blob"`` when large) because
formatting floats as JSON text is what a log line cost: 640 µs for a 1024-row, 30-feature batch with
orjson, and reading it back is a ``frombuffer`` instead of a float parse. Outputs of fewer than 64
values (a single row's) stay plain JSON. Class labels the server knows by index are written as packed
indices plus the class names (:func:`unpack_array` returns the names); other strings (categorical
inputs, labels of other models) stay JSON lists, a missing category ``""``. :func:`unpack_array` reads a
packed array back, checking it (with a :class:`BlobReader` for arrays in a blob file). Records written
before packing existed carry every feature as a JSON list under ``inputs`` (``null`` for missing); the
monitor reads every format.

``synthetic`` is true for a request its client marked as synthetic traffic (``X-MLCI-Traffic:
synthetic``, see :mod:`mlci.serving.traffic`: mlci's smoke test and post-deploy check), false for all
others. Marked requests are written, not skipped: the log is then a record of every check a version got
(when, on which rows, with which answers), and the monitor leaves them out of its windows and counts
them. Records written before the mark existed have no ``synthetic`` key; the monitor counts their rows
as *unmarked* (a check's rows among them cannot be told apart).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import orjson
import pybase64

__all__ = [
    "ACTIVE_FILE",
    "BLOB_SUFFIX",
    "BlobReader",
    "PredictionLog",
    "pack_array",
    "pack_labels",
    "read_lines",
    "unpack_array",
]

ACTIVE_FILE = "predictions.jsonl"
BLOB_SUFFIX = ".bin"


_OPTIONS = orjson.OPT_APPEND_NEWLINE
_LARGE_LINE = 16 * 1024  # lines at least this long are queued as they are, not copied into the buffer
_WAKE_BYTES = 4 * 1024 * 1024  # queued bytes that wake the writer before its next tick
_PACK_OUTPUTS_FROM = 64  # outputs with fewer values are written as plain JSON lists
_PACKABLE_KINDS = frozenset("fiub")  # float, signed and unsigned int, bool: fixed-size, no objects
_BLOB_FROM = 4096  # packed arrays of at least this many bytes go to the blob file
_BLOB_MAGIC = b"MLCIBLOB"
_BLOB_HEADER = 64  # magic, then the file's own name, space-padded
_BLOB_ALIGN = 64
_ZEROS = memoryview(bytes(_BLOB_ALIGN))
_BLOB_NAME = re.compile(r"predictions-[0-9A-Za-z._-]+\.bin\Z")  # a plain name in the log directory
_BLOB_KEY = b'"blob":["'  # how a line starts a blob reference (orjson writes no spaces)


# (array, its packed document, which gets the "blob" reference once the array's offset is known)
_Blobs = list[tuple[np.ndarray, dict[str, Any]]]


def _pack(array: np.ndarray, blobs: _Blobs, blob_from: float) -> dict[str, Any]:
    """A numeric array packed inline (base64), or from ``blob_from`` bytes set aside in ``blobs``."""
    contiguous = np.ascontiguousarray(array)
    packed: dict[str, Any] = {"dtype": contiguous.dtype.str, "shape": list(contiguous.shape)}
    if contiguous.nbytes < blob_from:
        packed["b64"] = pybase64.b64encode_as_string(contiguous.data)
    else:
        blobs.append((contiguous, packed))
    return packed


def _pack_labels(
    classes: Sequence[str], index: np.ndarray, blobs: _Blobs, blob_from: float
) -> dict[str, Any]:
    """Class labels as their indices (in the smallest unsigned type that holds them) plus the class names."""
    small = index.astype(
        np.uint8 if len(classes) <= 256 else np.uint16 if len(classes) <= 65536 else np.int64
    )
    packed = _pack(small, blobs, blob_from)
    packed["classes"] = list(classes)
    return packed


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """A numeric array as ``{"dtype": "<f4", "shape": [rows, cols], "b64": "<base64 of its C-order bytes>"}``."""
    return _pack(array, [], math.inf)


def pack_labels(classes: Sequence[str], index: np.ndarray) -> dict[str, Any]:
    """Class labels as their indices (a packed array of the smallest unsigned type) plus the class names."""
    return _pack_labels(classes, index, [], math.inf)


def _blob_header(name: str) -> bytes:
    raw = name.encode("ascii")
    if len(raw) > _BLOB_HEADER - len(_BLOB_MAGIC):
        raise ValueError(
            f"blob file name {name!r} is longer than the header's {_BLOB_HEADER - len(_BLOB_MAGIC)} bytes"
        )
    return _BLOB_MAGIC + raw.ljust(_BLOB_HEADER - len(_BLOB_MAGIC), b" ")


class BlobReader:
    """Reads the arrays that a log's lines keep in blob files (see the module docstring).

    Keeps up to ``max_open`` files open; close it (or use it as a context manager) when done. Every read
    is checked: a file that is gone, truncated, or was recycled for a newer segment while a record was
    being read raises ValueError saying which, instead of returning another record's bytes.
    """

    def __init__(self, directory: Path, max_open: int = 8) -> None:
        self.directory = directory
        self.max_open = max_open
        self._fds: dict[str, int] = {}

    def read(self, name: Any, offset: Any, nbytes: int) -> bytes:
        """``nbytes`` bytes at ``offset`` of blob file ``name``."""
        if not isinstance(name, str) or not _BLOB_NAME.match(name):
            raise ValueError(
                f"blob file name {name!r:.80} is not a log blob file name (predictions-<time>-<seq>.bin)"
            )
        if type(offset) is not int or offset < _BLOB_HEADER:
            raise ValueError(
                f"blob offset {offset!r:.40} is not an integer past the {_BLOB_HEADER}-byte header"
            )
        fd = self._open(name)
        size = os.fstat(fd).st_size
        if offset + nbytes > size:
            raise ValueError(
                f"blob file {name} holds {max(size - offset, 0)} bytes from offset {offset}, but the array "
                f"needs {nbytes}: the file is truncated"
            )
        data = os.pread(fd, nbytes, offset)
        if len(data) != nbytes or os.pread(fd, _BLOB_HEADER, 0) != _blob_header(name):
            self._forget(name)
            raise ValueError(
                f"blob file {name} was recycled for a newer segment while this record was read: the server "
                "keeps only its newest --log-keep segments, and this record's was dropped"
            )
        return data

    def _open(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        try:
            fd = os.open(self.directory / name, os.O_RDONLY)
        except FileNotFoundError:
            raise ValueError(
                f"blob file {name} is not in {self.directory}: the server deleted it (it keeps only its "
                "newest --log-keep segments) or it was moved away from its .jsonl file"
            ) from None
        if os.pread(fd, _BLOB_HEADER, 0) != _blob_header(name):
            os.close(fd)
            raise ValueError(
                f"blob file {name} does not start with its own header: it was recycled for a newer segment "
                "(the record's segment was dropped), or it is not an mlci log blob file"
            )
        if len(self._fds) >= self.max_open:
            self._forget(next(iter(self._fds)))
        self._fds[name] = fd
        return fd

    def _forget(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._fds):
            self._forget(name)

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def unpack_array(packed: Any, blobs: BlobReader | None = None) -> np.ndarray:
    """The array a packed-array document holds; ValueError saying what is wrong with a malformed one.

    An array kept in a blob file needs ``blobs``, a :class:`BlobReader` on the log's directory.
    """
    if (
        not isinstance(packed, dict)
        or not {"dtype", "shape"} <= packed.keys()
        or not packed.keys() & {"b64", "blob"}
    ):
        raise ValueError(
            f"expected a packed array {{dtype, shape, b64 or blob}}, got {type(packed).__name__} "
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
    expected = math.prod(shape) * dtype.itemsize
    if "blob" in packed:
        ref = packed["blob"]
        if not isinstance(ref, list) or len(ref) != 2:
            raise ValueError(f"packed array blob reference {ref!r:.80} is not [file name, offset]")
        if blobs is None:
            raise ValueError(
                f"packed array is kept in blob file {ref[0]!r:.80}: read it with a BlobReader on the log directory"
            )
        raw = blobs.read(ref[0], ref[1], expected)
    else:
        try:
            raw = pybase64.b64decode(packed["b64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"packed array data is not base64 ({exc})") from None
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


def _padded(nbytes: int) -> int:
    return nbytes + (-nbytes) % _BLOB_ALIGN


def _output(
    array: np.ndarray, indexed: tuple[Sequence[str], np.ndarray] | None, blobs: _Blobs, blob_from: int
) -> Any:
    """One output as the log writes it: plain JSON when small (cheaper than packing), else packed labels
    (when their class indices are known), a packed numeric array, or a list of strings."""
    if indexed is not None:
        classes, index = indexed
        if index.size < _PACK_OUTPUTS_FROM:
            return np.array(classes, dtype=object).take(index).tolist()
        return _pack_labels(classes, index, blobs, blob_from)
    if array.size < _PACK_OUTPUTS_FROM:
        return array.tolist()
    return _pack(array, blobs, blob_from) if array.dtype.kind in _PACKABLE_KINDS else array.tolist()


def _new_stem(seq: int) -> str:
    return f"predictions-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{seq:06d}"


# What the writer thread is handed: lines (one or a buffer of many), a blob file's bytes, or the stem of
# the segment that starts there.
_Chunk = bytes | bytearray | memoryview | str


class PredictionLog:
    """Buffered JSON Lines writer with blob files and size rotation; ``append`` never blocks on I/O."""

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
        blob_from: int = _BLOB_FROM,
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
        self.blob_from = blob_from
        self._on_write = on_write
        self._on_drop = on_drop
        # Small lines go into one growing buffer (thousands of ~1 KiB objects alive between flushes cost
        # measurable page-fault time); a large line and blob data are queued as they are, never copied
        # again. A str in the queue starts a segment, decided here from sizes so that flush never re-splits
        # anything. The lock is uncontended except at the swap.
        self._queue: list[_Chunk] = []
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
        self._rotate_leftover()
        # The append side plans the segment (its stem, the bytes its two files will hold once the queue is
        # written); the writer side follows the plan as it writes.
        self._stem = self._next_stem()
        self._blob_planned = _BLOB_HEADER
        self._writing = self._stem
        self._file = self._path.open("ab", buffering=0)  # unbuffered: flush() writes with os.writev
        self._planned = self._file.tell()  # an empty leftover file is simply continued
        self._blob_fd: int | None = None
        self._blob_offset = _BLOB_HEADER  # where the writing segment's next blob bytes go
        self._prune()  # a smaller keep than last time, or the leftover segment just rotated
        self._thread = threading.Thread(target=self._loop, name="mlci-predlog", daemon=True)
        self._thread.start()

    def _next_stem(self) -> str:
        self._seq += 1
        return _new_stem(self._seq)

    def _rotate_leftover(self) -> None:
        """A previous run's non-empty active file becomes a rotated segment, named after the blob file its
        lines point to, so that pruning deletes the two together."""
        try:
            f = self._path.open("rb")
        except FileNotFoundError:
            return
        with f:
            if not os.fstat(f.fileno()).st_size:
                return
            # A segment's lines all point to one blob file: the first reference names it. Searched in a map
            # of the file, so a segment without batches is scanned without being read into memory.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as content:
                start = content.find(_BLOB_KEY)
                end = content.find(b'"', start + len(_BLOB_KEY)) if start >= 0 else -1
                name = content[start + len(_BLOB_KEY) : end].decode("ascii", "replace") if end >= 0 else ""
        stem = name[: -len(BLOB_SUFFIX)] if _BLOB_NAME.match(name) else self._next_stem()
        if (self.directory / f"{stem}.jsonl").exists():
            stem = self._next_stem()
        self._path.rename(self.directory / f"{stem}.jsonl")

    def append(
        self,
        request_id: str,
        ts: float,
        rows: int,
        numeric: np.ndarray | None,
        categories: dict[str, list[str]],
        outputs: dict[str, np.ndarray],
        labels: dict[str, tuple[Sequence[str], np.ndarray]] | None = None,
        synthetic: bool = False,
    ) -> bool:
        """Serialize one record and queue it; False if the queue is full (``max_pending`` records or
        ``max_pending_bytes``: the disk cannot keep up) or the log closed: the record is dropped and counted.

        ``numeric`` is the ``(n_numeric, rows)`` matrix the model saw (None without numeric features),
        ``categories`` the categorical columns as strings, ``outputs`` the model's outputs: numeric ones are
        packed, string ones written as (nested) lists in their tensor shape, unless ``labels`` gives their
        class names and indices (then packed indices: 1 byte a row instead of the name in JSON). Outputs
        of fewer than 64 values (a single row's) stay plain JSON lists: cheaper to write than to pack.
        Arrays of ``blob_from`` bytes or more go to the blob file; the arrays must not change afterwards.
        ``synthetic`` marks a smoke test's or a check's request (``X-MLCI-Traffic: synthetic``): written
        on every record, true or false, so that a record without it is known to be older than the mark.
        """
        blobs: _Blobs = []
        record: dict[str, Any] = {
            "id": request_id,
            "ts": ts,
            "model": self.model,
            "digest": self.digest,
            "rows": rows,
            "synthetic": synthetic,
            "inputs": categories,
            "outputs": {
                name: _output(array, labels.get(name) if labels else None, blobs, self.blob_from)
                for name, array in outputs.items()
            },
        }
        if numeric is not None:
            record["numeric"] = _pack(numeric, blobs, self.blob_from)
        if blobs:
            blob_bytes = sum(_padded(array.nbytes) for array, _ in blobs)
            line = b""  # serialized once the offsets are known
        else:
            blob_bytes = 0
            line = orjson.dumps(record, option=_OPTIONS)
        with self._lock:
            if not self._closed and self._pending < self.max_pending:
                if blobs:
                    line = self._place(record, blobs)
                size = len(line) + blob_bytes
                if self._pending_bytes + size <= self.max_pending_bytes:
                    used = self._planned + self._blob_planned - _BLOB_HEADER
                    if used and used + size > self.max_bytes:
                        self._end_tail()
                        self._stem = self._next_stem()
                        self._queue.append(self._stem)
                        self._planned, self._blob_planned = 0, _BLOB_HEADER
                        if blobs:
                            line = self._place(record, blobs)  # the offsets in the new blob file
                            size = len(line) + blob_bytes
                    for array, _ in blobs:  # flush sends these to the blob file, the lines to the .jsonl
                        self._queue.append(array.reshape(-1).view(np.uint8).data)
                        if array.nbytes % _BLOB_ALIGN:
                            self._queue.append(_ZEROS[: -array.nbytes % _BLOB_ALIGN])
                    if len(line) < _LARGE_LINE:
                        self._tail += line
                    else:
                        self._end_tail()
                        self._queue.append(line)
                    self._planned += len(line)
                    self._blob_planned += blob_bytes
                    self._pending += 1
                    self._pending_bytes += size
                    if self._pending_bytes >= _WAKE_BYTES:
                        self._wake.set()  # a heavy stream: write now rather than hold megabytes until the tick
                    return True
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)
        return False

    def _place(self, record: dict[str, Any], blobs: _Blobs) -> bytes:
        """The line, with each blob's reference at the next offsets of the planned segment (``_lock`` held)."""
        name = self._stem + BLOB_SUFFIX
        offset = self._blob_planned
        for array, packed in blobs:
            packed["blob"] = [name, offset]
            offset += _padded(array.nbytes)
        return orjson.dumps(record, option=_OPTIONS)

    def flush(self) -> None:
        """Write every queued line now (called from the writer thread and on close)."""
        with self._io_lock:
            with self._lock:
                self._end_tail()
                queue, self._queue = self._queue, []
                count, self._pending, self._pending_bytes = self._pending, 0, 0
            if not count:
                return
            # A failed write loses its segment's queued lines, but every segment still starts where it
            # was planned, and every blob goes to its planned offset: what is written later stays right.
            # Lost lines are counted as dropped, like the ones the queue refuses.
            error: OSError | None = None
            lost = 0
            lines: list[bytes | bytearray] = []
            blob: list[bytes | bytearray | memoryview] = []
            for chunk in queue:
                if isinstance(chunk, str):
                    failed, missing = self._write(blob, lines)
                    error, lost = failed or error, lost + missing
                    blob, lines = [], []
                    self._rotate(chunk)
                elif isinstance(chunk, memoryview):
                    blob.append(chunk)
                else:
                    lines.append(chunk)
            failed, missing = self._write(blob, lines)
            error, lost = failed or error, lost + missing
            self.written += count - lost
            if self._on_write is not None and count > lost:
                self._on_write(count - lost)
            if lost:
                self.dropped += lost
                if self._on_drop is not None:
                    self._on_drop(lost)
            if error is not None:
                raise error

    def _write(
        self, blob: list[bytes | bytearray | memoryview], lines: list[bytes | bytearray]
    ) -> tuple[OSError | None, int]:
        """The segment's blob bytes first, then the lines that point to them (not written if the blob
        bytes could not be). Returns the error instead of raising it, and how many lines were lost: a
        line cut short (ENOSPC mid-write) is cut off the file again, so every line on disk is whole."""
        fd = self._file.fileno()
        start = None
        try:
            if blob:
                offset = self._blob_offset
                self._blob_offset += sum(len(piece) for piece in blob)
                if self._blob_fd is None:
                    self._blob_fd = self._open_blob(None)
                _write_all(self._blob_fd, blob, offset)
            if lines:
                start = os.lseek(fd, 0, os.SEEK_END)
                _write_all(fd, lines)
        except OSError as exc:
            total = sum(chunk.count(b"\n") for chunk in lines)
            if start is None:
                return exc, total
            try:
                written = b"".join(lines)[: os.lseek(fd, 0, os.SEEK_END) - start]
                whole = written.rfind(b"\n") + 1
                os.ftruncate(fd, start + whole)
            except OSError:
                return exc, total  # cannot tell or mend what reached the file: count it all as lost
            return exc, total - written.count(b"\n", 0, whole)
        return None, 0

    def _open_blob(self, recycled: Path | None) -> int:
        """The writing segment's blob file, new or ``recycled`` (a deleted segment's), positioned after
        its header."""
        name = self._writing + BLOB_SUFFIX
        path = self.directory / name
        if recycled is not None:
            recycled.rename(path)
            fd = os.open(path, os.O_WRONLY)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, [_blob_header(name)], 0)  # the header first: a reader of the old name stops here
        except OSError:
            os.close(fd)
            raise
        return fd

    def _end_tail(self) -> None:
        """Queue the small lines gathered so far as one chunk (call with ``_lock`` held)."""
        if self._tail:
            self._queue.append(self._tail)
            self._tail = bytearray()

    def close(self) -> None:
        """Stop the writer thread, write what is queued, close the files. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        try:
            self.flush()  # an OSError (full disk) is raised after the files are closed; its lines are counted
        finally:
            with self._io_lock:
                self._file.close()
                if self._blob_fd is not None:
                    os.close(self._blob_fd)
                    self._blob_fd = None

    def _rotate(self, stem: str) -> None:
        """End the writing segment; start segment ``stem``; with ``keep``, drop the oldest segments."""
        self._file.close()
        self._path.rename(self.directory / f"{self._writing}.jsonl")
        if self._blob_fd is not None:
            os.close(self._blob_fd)
            self._blob_fd = None
        self._writing = stem
        self._blob_offset = _BLOB_HEADER
        self._file = self._path.open("ab", buffering=0)
        self._prune()

    def _prune(self) -> None:
        """With ``keep``: delete the rotated segments beyond it; the newest blob file dropped (the likeliest
        to be in the page cache) becomes the writing segment's, if that has none yet."""
        if not self.keep:
            return
        rotated = sorted(self.directory.glob("predictions-*.jsonl"))
        for old in rotated[: -self.keep]:
            old.unlink(missing_ok=True)
        kept = rotated[-self.keep :]
        oldest = kept[0].name[: -len(".jsonl")] if kept else self._writing
        stale = [
            p
            for p in sorted(self.directory.glob(f"predictions-*{BLOB_SUFFIX}"))
            if p.name[: -len(BLOB_SUFFIX)] < oldest
        ]
        if stale and self._blob_fd is None:
            self._blob_fd = self._open_blob(stale.pop())
        for old in stale:
            old.unlink(missing_ok=True)

    def _loop(self) -> None:
        failing: str | None = None  # the error of the current run of failed writes: said once, not per tick
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()  # close() sets _closed before waking us, so the loop still ends
            try:
                self.flush()
            except Exception as exc:  # a full disk must not kill the writer; the lost records are counted
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
                if why != failing:
                    failing = why
                    print(
                        f"mlci serve: the prediction log cannot write to '{self.directory}' ({why}); records are "
                        "dropped and counted in mlci_prediction_log_dropped_total until it can. Free space "
                        "there, or pass --log-keep / another --log-dir.",
                        file=sys.stderr,
                    )
                time.sleep(self.flush_interval_s)
            else:
                if failing is not None:
                    print(f"mlci serve: the prediction log writes again to '{self.directory}'.", file=sys.stderr)
                    failing = None


_IOV_MAX = 1024  # buffers per writev call (Linux's limit)


def _write_all(fd: int, pieces: Sequence[bytes | bytearray | memoryview], offset: int | None = None) -> None:
    """Write ``pieces`` in order with as few ``writev`` calls as possible (``pwritev`` from ``offset`` if
    given), resuming after a short write."""
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        batch = views[:_IOV_MAX]
        if offset is None:
            written = os.writev(fd, batch)
        elif hasattr(os, "pwritev"):
            written = os.pwritev(fd, batch, offset)
            offset += written
        else:  # macOS before Python 3.12: only the writer thread writes this file, so seek, then write
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.writev(fd, batch)
            offset += written
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
