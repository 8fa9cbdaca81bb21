"""Smoke and post-deploy requests end to end: marked by mlci, logged flagged, never judged by the monitor.

A real deploy on 127.0.0.1 (`mlci run`, `mlci promote staging --approve`: the post-deploy check smokes
the live server, which writes the environment's prediction log), then real client traffic through
tritonclient over HTTP, then one `mlci monitor` cycle on that log: it must judge exactly the client's
rows and count the check's apart (issue 13, item 6).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.release.deploy import running, stop
from mlci.release.smoke import free_port, run_smoke, start_server, wait_ready
from mlci.serving.predlog import read_lines

from .conftest import EXAMPLE


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    ports = f"staging_port = {free_port()}\nproduction_port = {free_port()}\n"
    toml.write_text(toml.read_text() + f"\n[deploy]\n{ports}check_timeout_s = 30\n")
    yield toml
    config = load_config(toml)
    for env in ("staging", "production"):
        stop(config, env)


def logged(log_dir: Path, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The log's records once ``count`` are written (the server writes its queue every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_lines(log_dir)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def triton_requests(url: str, frame: pd.DataFrame, batch: int) -> int:
    """Send ``frame`` as a real client would, ``batch`` rows a request; returns the requests sent."""
    sent = 0
    with triton.InferenceServerClient(url.removeprefix("http://")) as client:
        for lo in range(0, len(frame), batch):
            part = frame.iloc[lo : lo + batch]
            inputs = []
            for name in part.columns:
                tensor = triton.InferInput(name, [len(part), 1], "FP32")
                tensor.set_data_from_numpy(part[[name]].to_numpy(np.float32))
                inputs.append(tensor)
            client.infer("breast-cancer", inputs, request_id=f"client-{lo}")
            sent += 1
    return sent


def test_the_smoke_test_marks_every_request_it_sends(project: Path, tmp_path: Path) -> None:
    from mlci.stages import holdout_rows

    config = load_config(project)
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    artifact = Path(json.loads(out[out.index("{") :])["artifact"])
    rows = holdout_rows(config, 12)
    server = start_server(artifact, free_port(), tmp_path / "server.log", log_dir=tmp_path / "log")
    try:
        wait_ready(server.url, 30, server)
        report = run_smoke(artifact, rows, max_p99_ms=1000.0, url=server.url)
        assert report.passed, report.reason
        records = logged(tmp_path / "log", 13)
    finally:
        server.stop()
    assert len(records) == 13 and sum(r["rows"] for r in records) == 24  # 12 single rows, then one batch
    assert [r["synthetic"] for r in records] == [True] * 13


def test_a_deploy_check_and_client_traffic_then_the_monitor_judges_only_the_client(project: Path) -> None:
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--reason", "first", "--json")
    assert code == 0, out
    config = load_config(project)
    live = running(config, "staging")
    assert live is not None
    log_dir = config.workspace / "deploy" / "staging" / "predictions"
    check = logged(log_dir, config.smoke.rows + 1)  # the post-deploy check: single rows, then one batch
    check_rows = sum(r["rows"] for r in check)
    assert check_rows == 2 * config.smoke.rows

    frame = pd.read_csv(project.parent / "data.csv").drop(columns="target").head(150)
    requests = triton_requests(live["url"], frame, batch=5)
    records = logged(log_dir, len(check) + requests)
    assert len(records) == len(check) + requests

    state = project.parent / "monitor-state"
    code, out = invoke(
        "monitor", live["artifact"], "--log-dir", str(log_dir), "--state", str(state), "--once", "--json"
    )
    assert code == 0, out
    report = json.loads(out)
    assert report["rows"] == len(frame)  # the client's rows, and only those
    assert sum(w["rows"] for w in report["windows"]) == len(frame)
    assert report["synthetic_rows"] == check_rows and report["unmarked_rows"] == 0
    metrics = (state / "metrics.prom").read_text()
    assert f'mlci_monitor_synthetic_rows_total{{model="breast-cancer"}} {float(check_rows)}' in metrics
    client = [r for r in records if r["id"].startswith("client-")]
    assert len(client) == requests and all(r["synthetic"] is False for r in client)
    assert all(r["synthetic"] is True for r in check)  # recorded, flagged: the check's audit trail
