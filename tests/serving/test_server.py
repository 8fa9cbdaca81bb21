"""`mlci serve` as a real process: tamper refusal, load without failures or lost log lines, SIGTERM under load."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from mlci.cli import cli
from mlci.serving.predlog import BlobReader, read_lines, unpack_array

pytestmark = pytest.mark.slow


def test_cli_refuses_tampered_artifact(bc_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(bc_artifact, copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-1])
    result = CliRunner().invoke(cli, ["serve", str(copy), "--port", "0", "--no-log"])
    assert result.exit_code == 2
    assert "model.onnx" in result.output and "Rebuild or re-pull" in result.output


def test_help_does_not_import_the_server_stack() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from mlci.cli import cli; "
        "r = CliRunner().invoke(cli, ['serve', '--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@dataclass
class Tally:
    """What the clients saw."""

    ok_ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timeouts: int = 0


async def _hammer(
    url: str, body: bytes | list[bytes], clients: int, seconds: float, tally: Tally, on_start: Any = None
) -> None:
    """``clients`` concurrent keep-alive clients POSTing until ``seconds`` pass; each request times out at 15 s.
    With a list of bodies, client ``i`` sends body ``i % len(bodies)``."""
    bodies = body if isinstance(body, list) else [body]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=15) as ac:
        until = time.monotonic() + seconds

        async def client(body: bytes) -> None:
            while time.monotonic() < until:
                try:
                    response = await ac.post(url, content=body, headers={"content-type": "application/json"})
                except httpx.TimeoutException:
                    tally.timeouts += 1
                    return
                except httpx.TransportError as exc:
                    tally.errors.append(type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 200:
                    tally.ok_ids.append(orjson.loads(response.content)["id"])
                else:
                    tally.statuses.append(response.status_code)

        if on_start is not None:
            on_start()
        await asyncio.gather(*(client(bodies[i % len(bodies)]) for i in range(clients)))


def _row_body(bc_rows: list[dict[str, float]], make_body: Any) -> bytes:
    return orjson.dumps(make_body(bc_rows[:1]))


def test_load_64_clients_20s_no_failures_no_lost_log_lines(
    bc_artifact: Path, tmp_path: Path, serve_subprocess: Any, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    log_dir = tmp_path / "log"
    tally = Tally()
    with serve_subprocess(bc_artifact, log_dir) as (proc, url):
        asyncio.run(
            _hammer(f"{url}/v2/models/breast-cancer/infer", _row_body(bc_rows, make_body), 64, 20, tally)
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal after its graceful shutdown
    assert tally.errors == [] and tally.statuses == [] and tally.timeouts == 0
    assert len(tally.ok_ids) > 1000
    logged = [r["id"] for r in read_lines(log_dir)]
    assert len(logged) == len(tally.ok_ids)
    assert set(logged) == set(tally.ok_ids)


def test_sigterm_under_load_keeps_every_answered_request(
    bc_artifact: Path, tmp_path: Path, serve_subprocess: Any, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    """Single rows and 200-row batches (whose arrays go to the log's blob files): every answered request is
    in the log after the shutdown, and every batch's inputs read back exactly."""
    log_dir = tmp_path / "log"
    batch_rows = (bc_rows * 4)[:200]
    tally = Tally()
    with serve_subprocess(bc_artifact, log_dir) as (proc, url):

        def schedule_sigterm() -> None:
            asyncio.get_running_loop().call_later(2.0, proc.send_signal, signal.SIGTERM)

        started = time.monotonic()
        asyncio.run(
            _hammer(
                f"{url}/v2/models/breast-cancer/infer",
                [_row_body(bc_rows, make_body), orjson.dumps(make_body(batch_rows))],
                64,
                6,
                tally,
                schedule_sigterm,
            )
        )
        assert time.monotonic() - started < 30, "clients were still waiting long after SIGTERM"
        assert proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal after its graceful shutdown
    assert tally.timeouts == 0, "a request hung across the shutdown"
    assert tally.statuses == [], f"non-200 answers during shutdown: {set(tally.statuses)}"
    assert len(tally.ok_ids) > 100 and tally.errors, "the load did not straddle the SIGTERM"
    records = read_lines(log_dir)
    logged = {r["id"] for r in records}
    assert set(tally.ok_ids) <= logged
    assert len(logged) == len(tally.ok_ids)
    batches = [r for r in records if r["rows"] == 200]
    assert len(batches) > 10 and all("blob" in r["numeric"] for r in batches)
    names = list(bc_rows[0])
    sent = np.array([[row[n] for row in batch_rows] for n in names], dtype=np.float32)
    with BlobReader(log_dir) as blobs:
        for r in batches:
            np.testing.assert_array_equal(unpack_array(r["numeric"], blobs), sent)


def test_cli_refuses_unwritable_log_dir(bc_artifact: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(
        cli, ["serve", str(bc_artifact), "--port", "0", "--log-dir", str(blocker / "log")]
    )
    assert result.exit_code == 2
    assert "Cannot create the prediction log directory" in result.output


def test_cli_refuses_a_body_budget_below_the_body_limit(bc_artifact: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["serve", str(bc_artifact), "--no-log", "--max-body-bytes", "2000", "--max-buffered-bytes", "1000"],
    )
    assert result.exit_code == 2
    assert "--max-buffered-bytes (1000) is below --max-body-bytes (2000)" in result.output


def test_keep_freed_memory_sets_glibc_thresholds_or_says_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from mlci.serving import server

    if sys.platform == "linux" and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert server.keep_freed_memory() is True
    with pytest.raises(ValueError, match="mmap_threshold is 1099511627776; mallopt takes a positive C int"):
        server.keep_freed_memory(mmap_threshold=1 << 40)  # would be truncated to 0 by ctypes

    def no_libc(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert server.keep_freed_memory() is False


def test_cli_log_and_batching_options_take_effect_in_a_real_server(
    bc_artifact: Path,
    bc_rows: list[dict[str, float]],
    make_body: Any,
    serve_subprocess: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--log-max-bytes, --log-keep and --batch-max-rows, seen in what a real `mlci serve` does."""
    monkeypatch.setenv("MLCI_SERVE_LOG_KEEP", "9")  # the option wins over the environment
    log_dir = tmp_path / "log"
    options = ("--log-max-bytes", "3000", "--log-keep", "1", "--batch-max-rows", "0")
    with serve_subprocess(bc_artifact, log_dir, *options) as (proc, url):

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=url) as client:
                bodies = [make_body([row]) for row in bc_rows[:32]]
                responses = await asyncio.gather(
                    *(client.post("/v2/models/breast-cancer/infer", json=b) for b in bodies)
                )
                return [r.status_code for r in responses]

        for _ in range(3):
            assert asyncio.run(burst()) == [200] * 32
        metrics = httpx.get(f"{url}/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
    count, rows = (
        float(next(line for line in metrics.splitlines() if line.startswith(name)).rsplit(" ", 1)[1])
        for name in ("mlci_onnxruntime_batch_rows_count", "mlci_onnxruntime_batch_rows_sum")
    )
    assert count == rows >= 96  # batching off: one onnxruntime call per request, even under concurrency
    rotated = list(log_dir.glob("predictions-*.jsonl"))
    assert len(rotated) == 1  # rotated at 3,000 bytes, only the newest kept
    assert all(p.stat().st_size <= 3000 for p in [*rotated, log_dir / "predictions.jsonl"])
    bad = CliRunner().invoke(cli, ["serve", str(bc_artifact), "--log-keep", "-1"])
    assert bad.exit_code == 2 and "--log-keep" in bad.output and "-1" in bad.output


def _read_line(proc: subprocess.Popen[bytes], prefix: str, seconds: float) -> str:
    """The first line of the server's output that starts with ``prefix``, within ``seconds``."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + seconds
    while True:
        for line in data.decode(errors="replace").splitlines(keepends=True):
            if line.startswith(prefix) and line.endswith("\n"):
                return line.rstrip("\n")
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no {prefix!r} line in {data!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"the server exited without a {prefix!r} line: {data!r}"
        data += chunk


@pytest.mark.parametrize("case", ["xdg", "home", "env", "off"])
def test_ready_line_names_url_model_digest_and_log_dir_never_the_cwd(
    bc_artifact: Path,
    tmp_path: Path,
    serve_subprocess: Any,
    bc_rows: list[dict[str, float]],
    make_body: Any,
    case: str,
) -> None:
    """Without --log-dir the log goes under $XDG_STATE_HOME (else ~/.local/state), not into the current
    directory (a user's repository); MLCI_SERVE_LOG_DIR and --no-log still decide; the ready line says where."""
    from mlci.model.artifact import read_manifest

    cwd, home, state = tmp_path / "repo", tmp_path / "home", tmp_path / "state"
    cwd.mkdir()
    env = {"HOME": str(home), "XDG_STATE_HOME": str(state)}
    extra: tuple[str, ...] = ()
    expected: Path | None = state / "mlci" / "breast-cancer" / "predictions"
    if case == "home":
        env["XDG_STATE_HOME"] = ""  # empty counts as unset (XDG base directory spec)
        expected = home / ".local" / "state" / "mlci" / "breast-cancer" / "predictions"
    elif case == "env":
        expected = tmp_path / "from-env"
        env["MLCI_SERVE_LOG_DIR"] = str(expected)
    elif case == "off":
        extra, expected = ("--no-log",), None
    digest = read_manifest(bc_artifact)["digest"]
    with serve_subprocess(bc_artifact, None, *extra, env=env, cwd=cwd) as (proc, url):
        line = _read_line(proc, "mlci serve:", 10)
        print(line)
        where = "off" if expected is None else str(expected)
        assert line == f"mlci serve: serving breast-cancer {digest} at {url} (prediction log: {where})"
        body = make_body(bc_rows[:1], id="ready-1")
        assert httpx.post(f"{url}/v2/models/breast-cancer/infer", json=body).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
    assert list(cwd.iterdir()) == []  # no predictions/ in the directory the server was started from
    if expected is not None:
        assert [r["id"] for r in read_lines(expected)] == ["ready-1"]
