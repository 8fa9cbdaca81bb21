"""`mlci monitor` end to end: a real server writing its log, real traffic, a real webhook and registry."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.pipeline import open_registry, run_pipeline
from mlci.registry import push_artifact, tag_digest
from mlci.release.promote import Release, history, promote, store_verdict
from mlci.release.smoke import free_port, start_server, wait_ready
from mlci.serving.predlog import read_lines

from .conftest import Project, ReceiverServer, predict_records, shifted, write_log

MOVED = ["mean_radius", "mean_texture", "worst_area"]
ENV = {"MLCI_MONITOR_BAD_WINDOWS": "1", "MLCI_MONITOR_BACKOFF_S": "0"}


def infer_body(frame: pd.DataFrame, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [
            {"name": c, "datatype": "FP32", "shape": [len(frame), 1], "data": [float(v) for v in frame[c]]}
            for c in frame.columns
        ],
    }


def send(url: str, model: str, frame: pd.DataFrame, prefix: str, batch: int = 4) -> int:
    with httpx.Client(timeout=10.0) as client:
        for i, lo in enumerate(range(0, len(frame), batch)):
            response = client.post(
                f"{url}/v2/models/{model}/infer",
                json=infer_body(frame.iloc[lo : lo + batch], f"{prefix}-{i}"),
            )
            response.raise_for_status()
    return len(frame)


def wait_logged(log_dir: Path, rows: int, timeout: float = 20.0) -> None:
    """Until the server's writer thread has flushed ``rows`` rows (it writes every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_dir.is_dir() and sum(r["rows"] for r in read_lines(log_dir)) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not log {rows} rows within {timeout} s")


def monitor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["monitor", *args], env={**ENV, **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.output


def test_real_server_traffic_normal_then_drifted(
    bc: Project, tmp_path: Path, webhook: ReceiverServer
) -> None:
    log_dir = tmp_path / "log"
    server = start_server(bc.artifact, free_port(), tmp_path / "server.log", log_dir=log_dir)
    try:
        wait_ready(server.url, 30, server)
        model = bc.manifest["name"]
        sent = send(server.url, model, bc.holdout, "normal")
        wait_logged(log_dir, sent)
        common = [
            str(bc.artifact),
            "--log-dir",
            str(log_dir),
            "--state",
            str(tmp_path / "state"),
            "--webhook",
            webhook.receiver.url,
        ]
        code, out = monitor(*common, "--once", "--json", "--fail-on-drift")
        report = orjson.loads(out)
        assert code == 0 and report["status"] == "ok" and report["rows"] == sent, out
        assert webhook.receiver.requests == []
        sent += send(server.url, model, shifted(bc.holdout, MOVED, shift_sd=1.5), "drifted")
        wait_logged(log_dir, sent)
        code, out = monitor(*common, "--once", "--json", "--fail-on-drift")
    finally:
        server.stop()
    report = orjson.loads(out)
    assert code == 1 and report["status"] == "drift"
    assert report["drifted_features"] == sorted(MOVED) and report["rows"] == len(bc.holdout)
    drift_alert = webhook.receiver.bodies()[0]
    assert drift_alert["event"] == "alert" and drift_alert["condition"] == "drift"
    assert drift_alert["drifted_features"] == sorted(MOVED) and drift_alert["digest"] == bc.manifest["digest"]
    assert webhook.receiver.requests[0]["headers"]["idempotency-key"].endswith("-drift-alert")
    code, out = monitor(*common)  # text output; nothing new in the log
    assert code == 0 and out.startswith("cycle 3: insufficient (0 rows)")


def _second_artifact(bc: Project, root: Path) -> Path:
    shutil.copy(bc.config.parent / "data.csv", root / "data.csv")
    (root / "mlci.toml").write_text(bc.config.read_text().replace("C = 1.0", "C = 0.3"))
    return Path(run_pipeline(load_config(root / "mlci.toml"), until="evaluate").artifact)


def test_decay_rolls_production_back_in_a_real_registry(bc: Project, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    newer = _second_artifact(bc, project)
    store = open_registry(
        load_config(project / "mlci.toml")
    )  # an OCI image layout under project/.mlci/registry
    release = Release("monitor-test")
    digests = []
    for artifact in (bc.artifact, newer):
        pushed = push_artifact(store, artifact)
        store_verdict(store, {"candidate": pushed.artifact_digest, "passed": True, "checks": []})
        promote(store, "production", pushed.artifact_digest, release=release, approve=True)
        digests.append(pushed.artifact_digest)
    assert tag_digest(store, "production") == digests[1]

    records = predict_records(newer, bc.holdout, batch=4, prefix="p")
    write_log(tmp_path / "log", records)
    flip = {"benign": "malignant", "malignant": "benign"}
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(b"".join(
        orjson.dumps({"id": r["id"], "labels": [flip[t] for t in bc.truth[i * 4 : i * 4 + r["rows"]]]}) + b"\n"
        for i, r in enumerate(records)
    ))  # fmt: skip
    code, out = monitor(
        str(newer), "--log-dir", str(tmp_path / "log"), "--labels", str(labels), "--state", str(tmp_path / "state"),
        "--rollback-config", str(project / "mlci.toml"), "--no-deploy", "--once", "--json", "--fail-on-drift",
    )  # fmt: skip
    report = orjson.loads(out)
    assert code == 1 and report["status"] == "decay"
    [rollback] = [a for a in report["actions"] if a["action"] == "rollback"]
    assert rollback["ok"], rollback
    assert tag_digest(store, "production") == digests[0]  # the production tag moved back
    last = history(store, "production")[-1]
    assert last["action"] == "rollback" and last["from"] == digests[1] and last["to"] == digests[0]
    assert last["why"].startswith("mlci monitor: decay")
    outbox = sorted((tmp_path / "state" / "outbox").glob("*.json"))
    assert any(
        orjson.loads(p.read_bytes())["payload"]["event"] == "rollback" for p in outbox
    )  # waits for a webhook

    # A second monitor judging the same (no longer served) artifact must not roll production back again.
    code, out = monitor(
        str(newer), "--log-dir", str(tmp_path / "log"), "--labels", str(labels), "--state", str(tmp_path / "state2"),
        "--rollback-config", str(project / "mlci.toml"), "--no-deploy", "--once", "--json",
    )  # fmt: skip
    [again] = [a for a in orjson.loads(out)["actions"] if a["action"] == "rollback"]
    assert code == 0 and again["ok"] is False and "not rolling back" in again["error"]
    assert tag_digest(store, "production") == digests[0] and len(history(store, "production")) == 3


def test_bad_input_exits_2_with_a_clear_message(bc: Project, tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    code, out = monitor(
        str(bc.artifact), "--log-dir", str(tmp_path / "log"), env={"MLCI_MONITOR_WINDOW": "abc"}
    )
    assert code == 2 and "Config 'MLCI_MONITOR_WINDOW' has value 'abc'. Not a positive int." in out
    code, out = monitor(str(tmp_path), "--log-dir", str(tmp_path / "log"))
    assert code == 2 and "is not an mlci artifact" in out
    code, out = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--once", "--cycles", "2")
    assert code == 2 and "--once and --cycles exclude each other" in out
    code, out = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--window", "50")
    assert code == 2 and "window is 50 rows but min_rows is 100" in out


@pytest.mark.parametrize("cycles", ["2"])
def test_interval_and_cycles_run_several_cycles(bc: Project, tmp_path: Path, cycles: str) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, prefix="a"))
    code, out = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "s"),
                        "--interval", "0", "--cycles", cycles, "--json")  # fmt: skip
    reports = orjson.loads(out)
    assert (
        code == 0
        and [r["cycle"] for r in reports] == [1, 2]
        and [r["rows"] for r in reports] == [len(bc.holdout), 0]
    )
