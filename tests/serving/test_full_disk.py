"""A full disk under the prediction log, for real: a tiny tmpfs mounted by the test (needs root).

Seen before the fix: a server on a full disk answered 200 to every request while its log lost lines, and
``mlci_prediction_log_dropped`` stayed 0; a line cut by ENOSPC stayed in the file, half written.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlci.serving.predlog import PredictionLog, read_lines
from mlci.serving.settings import Settings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs: a real filesystem that fills up (ENOSPC), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_lines_lost_to_a_full_disk_are_counted_and_none_is_left_half_written(small_disk: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(small_disk, model="m", digest="d", flush_interval_s=60, on_drop=dropped.append)
    appended = 0
    for batch in range(60):
        for i in range(40):
            log.append(f"{batch}-{i}", 0.0, 1, np.full((30, 1), i, dtype=np.float32), {}, {})
            appended += 1
        with contextlib.suppress(OSError):  # the writer thread says so and carries on; here the test flushes
            log.flush()
    log.close()
    records = read_lines(small_disk)  # every line on disk parses: none was left cut
    assert log.dropped > 0 and sum(dropped) == log.dropped
    assert log.written == len(records)
    assert log.written + log.dropped == appended
    assert (small_disk / "predictions.jsonl").read_bytes().endswith(b"\n")


def test_a_server_on_a_full_disk_counts_what_its_log_drops(
    bc_artifact: Path, small_disk: Path, run_server: Any, make_body: Any, bc_rows: list[dict[str, float]]
) -> None:
    settings = Settings(artifact=bc_artifact, log_dir=small_disk, log_flush_interval_s=0.05)
    with run_server(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        body = make_body(bc_rows[:1])
        statuses = [client.post("/v2/models/breast-cancer/infer", json=body).status_code for _ in range(400)]
    metrics = srv.state.metrics.render().decode()  # after shutdown, which wrote (or counted) every record
    assert statuses == [200] * 400  # serving goes on while the log cannot write
    lines = len(read_lines(small_disk))
    dropped = next(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("mlci_prediction_log_dropped_total{")
    )
    assert lines < 400 and dropped == 400 - lines, (lines, dropped)
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize < 8192
