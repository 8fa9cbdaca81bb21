"""The executor's exec cache on disk (tests/dagger/executor/evaluate.py ExecCache): no root needed."""

from __future__ import annotations

import os
import time
from pathlib import Path


def test_exec_cache_prunes_entries_no_run_used(tmp_path: Path) -> None:
    """The executor's exec cache drops entries unused for two weeks and stale half-written ones, keeps the rest."""
    from .executor.evaluate import ExecCache

    cache = ExecCache(tmp_path / "execs")
    old, fresh, partial = (tmp_path / "execs" / n for n in ("old", "fresh", ".half.123"))
    for entry in (old, fresh, partial):
        (entry / "layer").mkdir(parents=True)
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(partial, (time.time() - 7200, time.time() - 7200))
    assert sorted(cache.prune()) == [".half.123", "old"]
    assert [p.name for p in (tmp_path / "execs").iterdir()] == ["fresh"]
