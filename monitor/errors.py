"""The monitor's one error base; the CLI maps it to its exit code in one place."""

from __future__ import annotations

from mlci.errors import MlciError

__all__ = ["MonitorError"]


class MonitorError(MlciError):
    """Bad monitor input: an unreadable log line, a labels file that does not parse, a bad setting (exit 2)."""
