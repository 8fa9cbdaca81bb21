"""Read what the server appended to its prediction log since last time, across rotations.

The server writes ``predictions.jsonl`` and renames it ``predictions-<time>-<seq>.jsonl`` when it is
full (a rename keeps the inode). The cursor remembers the active file's inode and the byte offset read
so far, plus the rotated files already read completely. Next time:

- a rotated file with the remembered inode is the file that was active last time: read it from the offset;
- any other rotated file not yet read is read from the start;
- the active file is read from the offset if its inode is the remembered one, else from the start.

The active file is opened *before* the rotated files are listed. If it was rotated in between, its
content is read through the open handle and everything rotated after it waits for the next call: a
rotation at any moment can then neither skip, repeat nor reorder a line.
Only complete lines are taken from the active file (the server may be half-way through one).
A segment's blob file (``<stem>.bin``: a batch's arrays, which lines point to by name) is not read here:
the line's consumer reads it through :class:`~mlci.serving.predlog.BlobReader`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ACTIVE_FILE", "read_new", "start_cursor"]

ACTIVE_FILE = "predictions.jsonl"  # the same name serving/predlog.py writes


def start_cursor() -> dict[str, Any]:
    """A cursor that has read nothing."""
    return {"inode": None, "offset": 0, "done": []}


_BLOCK = 4 << 20  # read in 4 MiB blocks: memory stays flat however large the log has grown


def _scan(f: BinaryIO, start: int, consume: Callable[[bytes], None], *, partial_tail: bool) -> int:
    """Pass every line from ``start`` to ``consume``; returns the offset after the last complete line.

    ``partial_tail``: a last line without a newline is left for next time (the active file) instead of
    being consumed (a rotated file, which is never written again).
    """
    f.seek(start)
    offset = start
    rest = b""
    while block := f.read(_BLOCK):
        block = rest + block
        end = block.rfind(b"\n") + 1
        for line in block[:end].splitlines():
            if line:
                consume(line)
        rest = block[end:]
        offset += end
    if rest and not partial_tail:
        consume(rest)
        offset += len(rest)
    return offset


def read_new(
    directory: Path, cursor: Mapping[str, Any], consume: Callable[[bytes], None] | None = None
) -> tuple[list[bytes], dict[str, Any]]:
    """Complete lines appended since ``cursor`` (oldest first) and the cursor after them.

    With ``consume``, each line is passed to it as it is read and the returned list is empty (a large
    backlog is then never held in memory at once).
    """
    inode = cursor.get("inode")
    offset = int(cursor.get("offset", 0))
    done = set(cursor.get("done", []))
    lines: list[bytes] = []
    sink = consume if consume is not None else lines.append
    active = directory / ACTIVE_FILE
    try:
        handle = active.open("rb")
    except FileNotFoundError:
        handle = None
    try:
        active_inode = os.fstat(handle.fileno()).st_ino if handle is not None else None
        rotated = sorted(directory.glob("predictions-*.jsonl"))
        # names that vanished (deleted by the server's `keep`) drop out of the cursor
        new_done = [p.name for p in rotated if p.name in done]
        for path in rotated:
            if path.name in done:
                continue
            try:
                f = path.open("rb")
            except FileNotFoundError:
                continue
            with f:
                ino = os.fstat(f.fileno()).st_ino
                if ino == active_inode:
                    # The file we opened was rotated meanwhile: read it below, and leave the files rotated
                    # after it (and the new active file) for next time, so lines stay in order.
                    break
                _scan(f, offset if ino == inode else 0, sink, partial_tail=False)
            new_done.append(path.name)
        if handle is None:
            return lines, {"inode": None, "offset": 0, "done": new_done}
        start = offset if active_inode == inode else 0
        if start > os.fstat(handle.fileno()).st_size:
            start = 0  # truncated and rewritten: everything in it is new
        end = _scan(handle, start, sink, partial_tail=True)
        return lines, {"inode": active_inode, "offset": end, "done": new_done}
    finally:
        if handle is not None:
            handle.close()
