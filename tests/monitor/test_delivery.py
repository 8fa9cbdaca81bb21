"""Alert delivery failures are loud and recoverable: the real monitor CLI against real receivers on 127.0.0.1.

A 4xx or a redirect keeps the alert for a retry after the receiver (or the URL) is fixed, 410 Gone is
final, a receiver that drips its answer is cut off at the delivery deadline, keys are unique per monitor
instance and a webhook URL that cannot work is refused at start.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from mlci.cli import cli

from .conftest import Project, ReceiverServer, predict_records, shifted, write_log

MOVED = ["mean_radius", "mean_texture", "worst_area"]
ENV = {"MLCI_MONITOR_BAD_WINDOWS": "1", "MLCI_MONITOR_BACKOFF_S": "0", "MLCI_MONITOR_REJECT_BACKOFF_S": "0"}


def monitor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlci monitor ARGS` run in process."""
    result = CliRunner().invoke(cli, ["monitor", *args], env={**ENV, **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def drifted_log(bc: Project, log_dir: Path) -> Path:
    """A prediction log of drifted traffic: one cycle over it raises drift alerts."""
    write_log(
        log_dir, predict_records(bc.artifact, shifted(bc.holdout, MOVED, shift_sd=1.5), batch=4, prefix="d")
    )
    return log_dir


def alerts_waiting(bc: Project, tmp_path: Path) -> list[str]:
    """Run one cycle without a webhook: its drift alerts wait in the outbox. Returns the common arguments."""
    common = [
        str(bc.artifact),
        "--log-dir",
        str(drifted_log(bc, tmp_path / "log")),
        "--state",
        str(tmp_path / "state"),
    ]
    code, out, err = monitor(*common, "--once")
    assert code == 0 and "drift" in out and "waiting in the outbox" in err, (out, err)
    return common


def outbox(tmp_path: Path) -> list[dict[str, object]]:
    docs = [orjson.loads(p.read_bytes()) for p in sorted((tmp_path / "state" / "outbox").glob("*.json"))]
    assert docs, "the cycle wrote no alert"
    return docs


def test_a_4xx_is_loud_kept_for_retry_and_delivered_after_the_fix(
    bc: Project, tmp_path: Path, webhook: ReceiverServer
) -> None:
    """A Slack-style receiver refuses the generic body with 400: the alert stays pending, the console
    names the status and the receiver's reason, a metric counts it, --fail-on-drift exits 1; once the
    receiver accepts, the same alert (same key) is delivered."""
    common = alerts_waiting(bc, tmp_path)
    webhook.receiver.status = 400
    webhook.receiver.answer = {"error": "invalid_payload: missing 'text'"}
    code, out, err = monitor(*common, "--webhook", webhook.receiver.url, "--once", "--fail-on-drift")
    assert "HTTP 400" in err and "invalid_payload: missing 'text'" in err, err
    assert code == 1, (out, err)  # the cycle saw no drift (no new rows), but no alert got through
    assert {d["status"] for d in outbox(tmp_path)} == {"pending"}
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_alert_delivery_failures_total{model="breast-cancer",reason="rejected"}' in metrics
    rejected_keys = [r["headers"]["idempotency-key"] for r in webhook.receiver.requests]
    webhook.receiver.status = 200
    webhook.receiver.answer = None
    code, out, err = monitor(*common, "--webhook", webhook.receiver.url, "--once", "--fail-on-drift")
    assert code == 0, (out, err)
    assert {d["status"] for d in outbox(tmp_path)} == {"delivered"}
    delivered_keys = [
        r["headers"]["idempotency-key"] for r in webhook.receiver.requests if r["status"] == 200
    ]
    assert sorted(delivered_keys) == sorted(rejected_keys)


def test_a_redirect_is_not_followed_and_names_the_location(
    bc: Project, tmp_path: Path, webhook: ReceiverServer
) -> None:
    """301 means the configured URL is wrong: say where it points, keep the alert, do not follow it."""
    common = alerts_waiting(bc, tmp_path)
    webhook.receiver.status = 301
    webhook.receiver.headers = {"Location": "https://hooks.example.invalid/new-path"}
    code, _, err = monitor(*common, "--webhook", webhook.receiver.url, "--once", "--fail-on-drift")
    assert code == 1 and "HTTP 301" in err and "https://hooks.example.invalid/new-path" in err, err
    assert "not followed" in err and "webhook URL" in err
    assert {d["status"] for d in outbox(tmp_path)} == {"pending"}


def test_410_gone_is_final_and_said(bc: Project, tmp_path: Path, webhook: ReceiverServer) -> None:
    """410 Gone: the receiver says it will never take this again, so the alert is dead, loudly."""
    common = alerts_waiting(bc, tmp_path)
    webhook.receiver.status = 410
    code, _, err = monitor(*common, "--webhook", webhook.receiver.url, "--once", "--fail-on-drift")
    assert code == 1 and "HTTP 410" in err and "dead" in err, err
    assert {d["status"] for d in outbox(tmp_path)} == {"dead"}
    assert len(webhook.receiver.requests) == len(outbox(tmp_path))  # one try each, no retries


class DripServer:
    """Reads a request, then answers one byte every ``every`` seconds (a stuck proxy, a broken receiver)."""

    def __init__(self, every: float = 3.0) -> None:
        self.every = every
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        answer = (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": true}'
        )
        for byte in answer:
            if self.stop.wait(self.every):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


def test_a_dripping_receiver_is_cut_off_at_the_delivery_deadline(
    bc: Project, tmp_path: Path, drip: DripServer
) -> None:
    """Each read gets a byte within the 5 s read timeout, so only a wall-clock deadline ends it."""
    common = alerts_waiting(bc, tmp_path)
    env = {**ENV, "MLCI_MONITOR_DELIVERY_DEADLINE_S": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mlci", "monitor", *common, "--webhook", drip.url, "--once", "--json", "--fail-on-drift"],
            capture_output=True, text=True, timeout=60, env={**_base_env(), **env},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the monitor was still blocked on the dripping receiver after 60 s")
    assert done.returncode == 1 and "1 s delivery deadline" in done.stderr, done.stderr
    took = orjson.loads(done.stdout)["duration_s"]  # the cycle, delivery included (not the process start)
    assert took < 8, f"the cycle took {took:.1f} s against a 1 s delivery deadline"
    assert {d["status"] for d in outbox(tmp_path)} == {"pending"}  # kept for the next cycle
    assert len(drip.connections) == 1  # a stuck receiver costs one deadline per cycle, not one per alert


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLCI_")}


def test_idempotency_keys_differ_between_monitor_instances(
    bc: Project, tmp_path: Path, webhook: ReceiverServer
) -> None:
    """Two state directories (a fresh state, a new container) both start at cycle 1: a deduplicating
    receiver must still see two different keys; a restart on the same state keeps its instance."""
    log_dir = drifted_log(bc, tmp_path / "log")
    for state in ("a", "b"):
        code, out, err = monitor(str(bc.artifact), "--log-dir", str(log_dir), "--state", str(tmp_path / state),
                                 "--webhook", webhook.receiver.url, "--once")  # fmt: skip
        assert code == 0, (out, err)
    keys = [r["headers"]["idempotency-key"] for r in webhook.receiver.requests]
    assert len(keys) >= 2 and len(set(keys)) == len(keys), keys
    instance = (tmp_path / "a" / "instance-id").read_text().strip()
    assert len(instance) >= 12
    assert all(k.startswith(instance) for k in keys[: len(keys) // 2])
    monitor(str(bc.artifact), "--log-dir", str(log_dir), "--state", str(tmp_path / "a"), "--once")
    assert (tmp_path / "a" / "instance-id").read_text().strip() == instance


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("hooks.example.com/alert", "no scheme"),
        ("ftp://127.0.0.1/hook", "'ftp'"),
        ("http:///hook", "no host"),
    ],
)
def test_a_webhook_url_that_cannot_work_is_refused_at_start(
    bc: Project, tmp_path: Path, url: str, why: str
) -> None:
    (tmp_path / "log").mkdir()
    args = [
        str(bc.artifact),
        "--log-dir",
        str(tmp_path / "log"),
        "--state",
        str(tmp_path / "state"),
        "--once",
    ]
    for how in ({"args": ["--webhook", url], "env": {}}, {"args": [], "env": {"MLCI_MONITOR_WEBHOOK": url}}):
        code, out, err = monitor(*args, *how["args"], env=how["env"])  # type: ignore[arg-type]
        assert code == 2, (out, err)
        assert url in err and why in err and "http:// or https://" in err, err
    assert not (tmp_path / "state" / "outbox").exists() or not list((tmp_path / "state" / "outbox").iterdir())
