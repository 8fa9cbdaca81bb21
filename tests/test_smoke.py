"""The smoke test against the real `mlci serve` process on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlci.config import load_config
from mlci.errors import CheckFailed
from mlci.model.data import holdout_mask
from mlci.model.train import load_data
from mlci.pipeline import run_pipeline
from mlci.release.smoke import run_smoke, serving

from .conftest import EXAMPLE, reseal


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("smoke") / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    config = load_config(root / "mlci.toml")
    artifact = run_pipeline(config, until="evaluate").artifact
    data = load_data(config)
    X = data.X[holdout_mask(data, config.holdout, config.seed)].head(12)
    return artifact, X  # type: ignore[return-value]


def test_smoke_passes_and_measures(example: tuple[Path, object]) -> None:
    artifact, X = example
    report = run_smoke(artifact, X, max_p99_ms=1000.0)
    assert report.passed, report.reason
    assert report.rows == 12 and report.p99_ms >= report.p50_ms > 0
    assert report.url.startswith("http://127.0.0.1:")


def test_latency_budget_fails_the_smoke(example: tuple[Path, object]) -> None:
    artifact, X = example
    report = run_smoke(artifact, X, max_p99_ms=1e-6)
    assert not report.passed and "over the 1e-06 ms budget" in report.reason


def test_live_endpoint_serving_another_model_is_caught(example: tuple[Path, object], tmp_path: Path) -> None:
    artifact, X = example
    # Same model name and schema, different behaviour: a more regularised model.
    config_root = tmp_path / "p"
    shutil.copytree(EXAMPLE, config_root, ignore=shutil.ignore_patterns(".mlci"))
    toml = (config_root / "mlci.toml").read_text().replace("C = 1.0", "C = 0.001")
    (config_root / "mlci.toml").write_text(toml)
    weaker = run_pipeline(load_config(config_root / "mlci.toml"), until="evaluate").artifact
    with serving(weaker, timeout=30) as live:
        report = run_smoke(artifact, X, max_p99_ms=1000.0, url=live.url)
    assert not report.passed and report.mismatches and "differ from in-process" in report.reason


def test_server_that_cannot_load_the_model_fails_with_its_log(example: tuple[Path, object], tmp_path: Path) -> None:
    artifact, X = example
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    reseal(broken)
    with pytest.raises(CheckFailed) as info:
        run_smoke(broken, X, max_p99_ms=1000.0, timeout_s=20)
    assert "Server log (tail)" in str(info.value) or "not ready" in str(info.value)


def _environ_of(pid: int) -> dict[str, str]:
    """The environment the kernel holds for a live process, as anyone running as its user can read it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_a_started_server_does_not_inherit_the_registry_credentials(
    example: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: read /proc/<pid>/environ of the smoke server mlci started; the registry password was in it.

    The server needs its own settings (MLCI_SERVE_*), never the registry's username and password nor the
    monitor's webhook URL.
    """
    artifact, _ = example
    secret = "s3cret-Pa55word-do-not-leak"
    monkeypatch.setenv("MLCI_REGISTRY_USERNAME", "ci-robot")
    monkeypatch.setenv("MLCI_REGISTRY_PASSWORD", secret)
    monkeypatch.setenv("MLCI_MONITOR_WEBHOOK", "https://hooks.example.test/services/T0/B0/xoxb-webhook-secret")
    monkeypatch.setenv("MLCI_SERVE_LOG_KEEP", "3")
    with serving(artifact, timeout=30) as server:
        environ = _environ_of(server.process.pid)
    leaked = sorted(k for k in environ if k.startswith("MLCI_REGISTRY_") or k == "MLCI_MONITOR_WEBHOOK")
    assert leaked == [], f"the server's environment holds {leaked}"
    assert not any(secret in value or "xoxb-webhook-secret" in value for value in environ.values())
    assert environ.get("MLCI_SERVE_LOG_KEEP") == "3"  # the server's own settings still reach it
