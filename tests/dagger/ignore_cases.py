"""Paths of the model repository the module's --source must leave out, and paths it must keep (data only).

The engine applies a contextual directory's Ignore list with moby/patternmatcher
(internal/fsutil/filter.go; core/modfunc.go loads the contextual directory with CopyFilter{Exclude}),
where a pattern is anchored at the root: `.mlci` excludes ./.mlci but not examples/x/.mlci; `**/.mlci`
excludes both. A pattern matcher test (tests/dagger/executor/patterns.py) reuses these tables: each path
is relative to the source root, and a directory's whole subtree goes with it (MatchesOrParentMatches).
"""

from __future__ import annotations

# Local state mlci writes (the workspace: stage cache, artifacts, registry layout, runs, deploy state and
# prediction logs, all under .mlci by default), virtualenvs, tool caches and build outputs, at any depth.
EXCLUDED = [
    ".mlci/registry/bc/index.json",
    "examples/breast_cancer/.mlci/registry/breast-cancer/index.json",
    "examples/breast_cancer/.mlci/cache/train/ab12/estimator.skops",
    "examples/breast_cancer/.mlci/runs.jsonl",
    "examples/breast_cancer/.mlci/staging/predictions/predictions.jsonl",
    "models/churn/.mlci/artifacts/sha256-00/manifest.json",
    ".venv/bin/python",
    ".venv-kserve/bin/python",
    "ci/.venv/bin/python",
    "ci/sdk/pyproject.toml",
    ".git/HEAD",
    "mlci/__pycache__/cli.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    "ci/.pytest_cache/README.md",
    ".mypy_cache/3.11/mlci/cli.meta.json",
    ".ruff_cache/content/0",
    ".hypothesis/examples/ab",
    "mlci.egg-info/PKG-INFO",
    "ci/src/mlci_dagger.egg-info/PKG-INFO",
    "build/lib/mlci/cli.py",
    "dist/mlci-0.1.0-py3-none-any.whl",
    "bench/.work/run-1/out.json",
]

# What the stages read: code, configs, data, tests.
KEPT = [
    "mlci.toml",
    "pyproject.toml",
    "examples/breast_cancer/mlci.toml",
    "examples/breast_cancer/data.csv",
    "examples/breast_cancer/prepare.py",
    "mlci/cli.py",
    "tests/dagger/test_gate.py",
    "ci/src/mlci_dagger/main.py",
    "docs/dagger.md",
    "predictions.py",
]
