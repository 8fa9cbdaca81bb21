"""A full disk, a read-only workspace and a denied write end in a named error, not a traceback, and lose
nothing stored before. Real filesystems: tmpfs mounts the test makes (needs root, as CI has).

Seen before the fix: each of the three ended in a Python traceback (exit 1) from deep inside a stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlci.model.artifact import verify_artifact

REPO = Path(__file__).resolve().parents[1]
MLCI = str(Path(sys.executable).parent / "mlci")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[object]:
    mounted: list[Path] = []

    def make(name: str, size: str, *options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        opts = ",".join([f"size={size}", "mode=0777", *options])
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _project(root: Path) -> Path:
    for name in ("mlci.toml", "data.csv"):
        shutil.copy(REPO / "examples" / "breast_cancer" / name, root / name)
    return root


def _run(cwd: Path, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    command = [MLCI, "run", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "HOME": str(cwd)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _fill(directory: Path) -> None:
    """Take every free byte of the filesystem ``directory`` is on (halving the write size down to 1 byte)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)


def test_full_disk_is_named_and_loses_nothing(tmp_path: Path, mount) -> None:  # type: ignore[no-untyped-def]
    disk = mount("disk", "24m")
    project = _project(disk)
    first = _run(project)
    assert first.returncode == 0, first.stdout + first.stderr
    artifacts = list((project / ".mlci" / "artifacts").iterdir())
    _fill(disk)
    (project / "mlci.toml").write_text((project / "mlci.toml").read_text().replace("seed = 7", "seed = 8"))
    result = _run(project)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert "No space left on device" in out and "Free space" in out and str(disk) in out
    (disk / "filler").unlink()
    for artifact in artifacts:
        verify_artifact(artifact)  # what was stored before is intact
    again = _run(project)
    assert again.returncode == 0, again.stdout + again.stderr


def test_read_only_workspace_is_named(tmp_path: Path, mount) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "project").mkdir()
    project = _project(tmp_path / "project")
    workspace = mount("ro", "1m", "ro")
    result = _run(project, "--workspace", str(workspace))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert "read-only" in out.lower() and "--workspace" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_permission_denied_is_named(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _project(project)
    os.chmod(tmp_path, 0o755)
    os.chmod(project, 0o755)  # readable by nobody, not writable
    for name in ("mlci.toml", "data.csv"):
        os.chmod(project / name, 0o644)
    result = _run(project, user=65534)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert "Permission denied" in out and "--workspace" in out
