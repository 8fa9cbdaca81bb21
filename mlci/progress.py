"""Stage progress on a terminal (one line per stage, updated in place) or as plain lines in logs."""

from __future__ import annotations

from typing import TextIO

from mlci.pipeline import StageEvent

__all__ = ["Progress"]

_MARK = {"ok": "✓", "failed": "✗"}


def _one_line(note: str, limit: int = 200) -> str:
    """A stage's note as a suffix of its progress line: its first line, cut at ``limit`` characters."""
    if not note:
        return ""
    first = note.splitlines()[0]
    return f" — {first[:limit]}" + ("…" if len(first) > limit or "\n" in note else "")


class Progress:
    """Call with each :class:`StageEvent`; writes to ``stream`` (in place when it is a TTY)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, event: StageEvent) -> None:
        if event.status == "waiting":
            holder = f"pid {event.detail['pid']}" if event.detail.get("pid") else "another process"
            self.stream.write(
                f"[mlci] waiting: the workspace {event.detail['path']} is in use by another mlci run ({holder}); "
                "this run starts when that one ends\n"
            )
            self.stream.flush()
            return
        if event.status == "running":
            if self.tty:
                self.stream.write(f"  … {event.stage:<10}")
                self.stream.flush()
            return
        how = "cache hit" if event.cache_hit else f"{event.duration_s:.2f}s"
        note = _one_line(str(event.detail.get("note") or ""))
        if self.tty:
            self.stream.write(f"\r\x1b[2K  {_MARK.get(event.status, '?')} {event.stage:<10} {how}{note}\n")
        else:
            self.stream.write(f"[mlci] {event.stage}: {event.status} ({how}){note}\n")
        self.stream.flush()
