"""Shared fixtures: real projects on disk (mlci.toml + CSV) that the real stages run on."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "breast_cancer"

BASE_TOML = """
[model]
name = "{name}"
task = "{task}"

[data]
path = "data.csv"
target = "{target}"
{data_extra}

[split]
holdout = 0.25
seed = 3

[estimator]
{estimator}

[evaluate]
latency_runs = 20
outlier_estimators = 20
"""


def pytest_configure(config: pytest.Config) -> None:
    """Restart pytest once with glibc's libm mask (portable numerics' GLIBC_TUNABLES), as the `mlci`
    program restarts itself: glibc reads it only when a process starts, and the in-process builds of the
    suite are portable builds (tests/__init__.py sets the rest, before numpy loads)."""
    import sys

    from mlci.numerics import GLIBC_HWCAPS_MASK, glibc_tunables, is_x86_64, libm_mask_in_effect, uses_glibc

    if not (is_x86_64() and uses_glibc()) or len(libm_mask_in_effect()) == len(GLIBC_HWCAPS_MASK):
        return
    if os.environ.get("MLCI_TEST_RESTARTED"):
        raise pytest.UsageError(
            "pytest restarted with GLIBC_TUNABLES for portable numerics, but glibc did not take it: expected "
            f"glibc.cpu.hwcaps={','.join(GLIBC_HWCAPS_MASK)} in GLIBC_TUNABLES, got {os.environ.get('GLIBC_TUNABLES')!r}"
        )
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)  # the restarted pytest writes to the real stdout and stderr
    env = dict(os.environ, GLIBC_TUNABLES=glibc_tunables(os.environ.get("GLIBC_TUNABLES")), MLCI_TEST_RESTARTED="1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# MLCI_* variables the test infrastructure itself reads (Makefile, tests/dagger, tests/serving): kept.
# Every other MLCI_* variable configures the product (registry credentials, serve/monitor settings, the
# actor, the cache…) and is cleared, so that no test depends on, or acts through, the caller's settings.
TEST_INFRASTRUCTURE_VARIABLES = (
    "MLCI_KSERVE_PYTHON",
    "MLCI_TEST_CACHE",
    "MLCI_EXECUTOR_CACHE",
    "MLCI_EXECUTOR_REQUIRED",
    "MLCI_DAGGER_SCHEMA",
    "MLCI_DAGGER_MIRROR",
    "MLCI_TEST_RESTARTED",
)
TEST_INFRASTRUCTURE_PREFIXES = ("MLCI_EXECUTOR_NET",)  # MLCI_EXECUTOR_NET, MLCI_EXECUTOR_NETNS_LOCK


def is_test_infrastructure(name: str) -> bool:
    """Whether the MLCI_* variable ``name`` belongs to the test infrastructure (kept) or to mlci (cleared)."""
    return name in TEST_INFRASTRUCTURE_VARIABLES or name.startswith(TEST_INFRASTRUCTURE_PREFIXES)


@pytest.fixture(autouse=True)
def no_cluster_and_no_product_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test: KUBECONFIG names a file that does not exist (so a kubectl on PATH finds no cluster and
    nothing is ever applied from the suite; a test that exercises applying puts a fake kubectl on PATH),
    and mlci's own MLCI_* settings from the caller's environment are cleared."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path_factory.getbasetemp() / "no-kubeconfig" / "config"))
    for name in [n for n in os.environ if n.startswith("MLCI_") and not is_test_infrastructure(n)]:
        monkeypatch.delenv(name)


def mixed_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Numeric + string categories, with missing values in both, and a learnable target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50_000, 15_000, rows).round(2),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "region": rng.choice(["north", "south", "east", "west"], rows),
        }
    )
    score = (frame["plan"] == "pro") * 1.5 + (frame["income"] - 50_000) / 15_000 + rng.normal(0, 0.5, rows)
    frame["churn"] = np.where(score > 0.5, "yes", "no")
    frame["spend"] = (frame["income"] / 1000 + (frame["plan"] == "pro") * 20 + rng.normal(0, 2, rows)).round(3)
    frame.loc[::13, "age"] = np.nan
    frame.loc[::17, "plan"] = None
    return frame


ProjectFactory = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    """Write mlci.toml (+ data.csv) into a fresh directory and return the config path."""
    counter = {"n": 0}

    def make(
        estimator: str = 'class = "sklearn.linear_model.LogisticRegression"\nparams = { max_iter = 500 }',
        *,
        task: str = "classification",
        target: str = "churn",
        frame: pd.DataFrame | None = None,
        csv_text: str | None = None,
        extra: str = "",
        name: str = "demo",
        data_extra: str | None = None,
    ) -> Path:
        counter["n"] += 1
        root = tmp_path / f"project{counter['n']}"
        root.mkdir()
        if csv_text is not None:
            (root / "data.csv").write_text(csv_text)
        else:
            (mixed_frame() if frame is None else frame).to_csv(root / "data.csv", index=False)
        if data_extra is None:  # the mixed frame has two targets; each uses the other as a leak-free drop
            data_extra = 'drop = ["spend"]' if target == "churn" else 'drop = ["churn"]' if target == "spend" else ""
        toml = BASE_TOML.format(name=name, task=task, target=target, estimator=estimator, data_extra=data_extra) + extra
        (root / "mlci.toml").write_text(toml)
        return root / "mlci.toml"

    return make


@pytest.fixture
def example_project(tmp_path: Path) -> Path:
    """A copy of the bundled breast-cancer example; returns its mlci.toml."""
    target = tmp_path / "breast_cancer"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".mlci"))
    return target / "mlci.toml"


def reseal(artifact: Path) -> str:
    """Recompute an edited artifact's file hashes, digest and evidence seal, as a (malicious or buggy) producer would.

    Lets tests build artifacts that pass verification but are broken inside (e.g. an unloadable model).
    """
    import json

    from mlci.canonical import sha256_file, write_json
    from mlci.model.artifact import seal

    manifest = json.loads((artifact / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry["sha256"] = sha256_file(artifact / name)
        entry["size"] = (artifact / name).stat().st_size
    seal(manifest)
    write_json(artifact / "manifest.json", manifest)
    return str(manifest["digest"])
