"""Progress display: updated in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from mlci.pipeline import StageEvent
from mlci.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    show = Progress(out)
    show(StageEvent("train", "running"))
    show(StageEvent("train", "ok", 1.234))
    show(StageEvent("export", "ok", 0.0, cache_hit=True))
    assert out.getvalue() == "[mlci] train: ok (1.23s)\n[mlci] export: ok (cache hit)\n"


def test_in_place_updates_on_a_tty() -> None:
    out = Terminal()
    show = Progress(out)
    show(StageEvent("train", "running"))
    show(StageEvent("train", "failed", 0.5))
    text = out.getvalue()
    assert text.startswith("  … train") and "\r\x1b[2K  ✗ train" in text and text.endswith("0.50s\n")


def test_a_rejecting_stage_and_a_push_say_what_happened_on_one_line() -> None:
    """Issue 13 items 1 and 12: the gate's line says it rejected the candidate; push says what it wrote."""
    out = io.StringIO()
    show = Progress(out)
    show(StageEvent("gate", "failed", 0.05, detail={"note": "candidate rejected: min accuracy"}))
    show(StageEvent("push", "ok", 0.0, cache_hit=True, detail={"note": "already in the registry as candidate: sha256:ab"}))
    show(StageEvent("smoke", "failed", 0.5, detail={"note": "server not ready\nlog tail line 1\nline 2"}))
    assert out.getvalue().splitlines() == [
        "[mlci] gate: failed (0.05s) — candidate rejected: min accuracy",
        "[mlci] push: ok (cache hit) — already in the registry as candidate: sha256:ab",
        "[mlci] smoke: failed (0.50s) — server not ready…",
    ]
