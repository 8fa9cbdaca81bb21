"""The README's set-up promise: `make test` installs the Debian packages the suite needs, or says how."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    command = ["make", "--no-print-directory", "-C", str(REPO), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_system_deps_is_a_no_op_when_everything_is_installed() -> None:
    result = _make("system-deps", "APT_PACKAGES=dpkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installing" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to another user")
def test_system_deps_without_root_names_the_command_and_stops() -> None:
    result = _make("system-deps", "APT_PACKAGES=dpkg mlci-no-such-package", user=65534)
    assert result.returncode != 0
    assert "sudo apt-get install -y mlci-no-such-package" in result.stdout
    assert "dpkg" not in result.stdout.split("install -y")[1]


def test_the_registry_the_suite_starts_is_installed() -> None:
    """After `make test`'s set-up, the real registry binary the fixtures start is there."""
    assert Path("/usr/bin/docker-registry").exists(), "run `make test` (it installs docker-registry)"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to another user")
@pytest.mark.parametrize("required, outcome", [("1", "1 error"), ("", "1 skipped")])
def test_executor_tests_fail_where_required_and_say_why_elsewhere(tmp_path: Path, required: str, outcome: str) -> None:
    """Without root the executor cannot run: under `make test-executed` (MLCI_EXECUTOR_REQUIRED=1) that is a
    failure naming why; run elsewhere (say `dagger call test` in a container) the test is skipped with it."""
    env = {**os.environ, "MLCI_EXECUTOR_REQUIRED": required, "HOME": str(tmp_path), "MLCI_EXECUTOR_CACHE": str(tmp_path)}
    tmp_path.chmod(0o777)
    command = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(REPO / ".venv" / "bin" / "python"), "-m", "pytest",
        "-q", "-p", "no:cacheprovider", "-rs", "-m", "executor",
        "tests/dagger/test_executor_semantics.py::test_cache_volumes_persist_across_containers",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert outcome in done.stdout, done.stdout + done.stderr
    assert (done.returncode != 0) == (required == "1")
    assert "the graph executor needs root" in done.stdout
