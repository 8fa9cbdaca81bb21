"""--source's Ignore list: every local state directory mlci writes, at any depth, stays out of the upload."""

from __future__ import annotations

from pathlib import PurePosixPath

from .ignore_cases import EXCLUDED, KEPT
from .registration import Fn

# Patterns that must hold at any depth: moby/patternmatcher anchors a pattern at the root unless it starts
# with `**/` (internal/fsutil/filter.go), so `.mlci` alone leaves examples/*/.mlci in the upload.
ANY_DEPTH = [
    "**/.mlci", "**/.venv", "**/.venv-*", "**/.git", "**/__pycache__", "**/.pytest_cache", "**/.mypy_cache",
    "**/.ruff_cache", "**/.hypothesis", "**/*.egg-info", "**/build", "**/dist",
]  # fmt: skip


def test_state_directories_are_ignored_at_any_depth(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, _, ctor = registered
    ignore = ctor.args["source"].ignore
    assert ignore is not None
    missing = [p for p in ANY_DEPTH if p not in ignore]
    assert not missing, f"not ignored at every depth: {missing}"
    assert {"ci/sdk", "bench/.work"} <= set(ignore)  # vendored SDK (dagger develop), the bench's scratch


def test_the_case_tables_name_each_pattern_and_keep_what_the_stages_read(
    registered: tuple[str, dict[str, Fn], Fn],
) -> None:
    """The tables the pattern matcher tests reuse: one nested case for each any-depth pattern."""
    _, _, ctor = registered
    ignore = ctor.args["source"].ignore or []
    for pattern in ANY_DEPTH:
        name = pattern.removeprefix("**/")
        nested = [
            p
            for p in EXCLUDED
            if any(PurePosixPath(part).match(name) for part in PurePosixPath(p).parts[1:-1])
        ]
        top = [p for p in EXCLUDED if PurePosixPath(PurePosixPath(p).parts[0]).match(name)]
        assert top or nested, f"no case for {pattern}"
    assert not set(EXCLUDED) & set(KEPT)
    assert not [p for p in ignore if p.startswith("!")]  # nothing re-included behind the list's back
