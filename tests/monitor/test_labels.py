"""Delayed labels through the real monitor CLI: an offset per labels source, late labels, bad lines
quarantined, and a cycle's error never stopping the loop (a `--cycles 0` daemon in a subprocess)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from mlci.cli import cli

from .conftest import Project, predict_records, write_log

ENV = {"MLCI_MONITOR_BACKOFF_S": "0"}


def monitor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlci monitor ARGS` run in process."""
    result = CliRunner().invoke(cli, ["monitor", *args], env={**ENV, **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def logged(bc: Project, tmp_path: Path) -> list[dict[str, Any]]:
    """The holdout served in requests of 4 rows, written to the prediction log; returns the records."""
    records = predict_records(bc.artifact, bc.holdout, batch=4, prefix="r")
    write_log(tmp_path / "log", records)
    return records


def label_lines(bc: Project, records: list[dict[str, Any]], which: range) -> bytes:
    """JSON Lines with the true labels of the requests ``which``."""
    return b"".join(
        orjson.dumps({"id": records[i]["id"], "labels": bc.truth[i * 4 : i * 4 + records[i]["rows"]]}) + b"\n"
        for i in which
    )


def run(bc: Project, tmp_path: Path, *extra: str) -> dict[str, Any]:
    """One cycle through the CLI (exit 0 required); its JSON report."""
    code, out, err = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "state"),
                             "--once", "--json", *extra)  # fmt: skip
    assert code == 0, (out, err)
    report: dict[str, Any] = orjson.loads(out)
    return report


def test_a_second_labels_file_joins_its_own_rows(bc: Project, tmp_path: Path) -> None:
    records = logged(bc, tmp_path)
    first, second = tmp_path / "labels-1.jsonl", tmp_path / "labels-2.jsonl"
    first.write_bytes(label_lines(bc, records, range(0, 17)))
    second.write_bytes(label_lines(bc, records, range(17, len(records))))
    report = run(bc, tmp_path, "--labels", str(first))
    assert report["performance"]["status"] == "ok" and report["performance"]["rows"] == 68
    report = run(bc, tmp_path, "--labels", str(second))  # the first file's offset must not apply here
    assert report["performance"]["status"] == "ok", report["performance"]["message"]
    assert report["performance"]["rows"] == len(bc.holdout) - 68


def test_a_replaced_labels_file_is_read_from_its_start(bc: Project, tmp_path: Path) -> None:
    records = logged(bc, tmp_path)
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(label_lines(bc, records, range(0, 20)))
    assert run(bc, tmp_path, "--labels", str(labels))["performance"]["rows"] == 80
    fresh = tmp_path / "labels.jsonl.new"  # rotated: a new file (new inode) under the same name, shorter
    fresh.write_bytes(label_lines(bc, records, range(20, len(records))))
    fresh.replace(labels)
    report = run(bc, tmp_path, "--labels", str(labels))
    assert report["performance"]["status"] == "ok", report["performance"]["message"]
    assert report["performance"]["rows"] == len(bc.holdout) - 80


def test_labels_given_after_cycles_ran_without_labels_still_join(bc: Project, tmp_path: Path) -> None:
    records = logged(bc, tmp_path)
    code, out, err = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "state"),
                             "--interval", "0", "--cycles", "2")  # fmt: skip
    assert code == 0 and out.startswith("cycle 1: ok"), (out, err)
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(label_lines(bc, records, range(len(records))))
    report = run(bc, tmp_path, "--labels", str(labels))
    assert report["performance"]["status"] == "ok", report["performance"]["message"]
    assert report["performance"]["rows"] == len(bc.holdout)


def test_bad_labels_lines_are_quarantined_and_counted(bc: Project, tmp_path: Path) -> None:
    """Garbage JSON, a label count unlike the request's rows, non-UTF-8 bytes; a CSV row that is not an
    integer: each goes to the quarantine file with source, line and reason; the good lines still join."""
    records = logged(bc, tmp_path)
    good = label_lines(bc, records, range(2, len(records))).splitlines(keepends=True)
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_bytes(
        b"{not json\n"
        + orjson.dumps({"id": records[0]["id"], "labels": ["benign"]}) + b"\n"  # the request had 4 rows
        + b'{"id": "x", "labels": ["b\xff\xfe"]}\n'
        + b"".join(good)
    )  # fmt: skip
    code, out, err = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "state"),
                             "--labels", str(jsonl), "--interval", "0", "--cycles", "2", "--json")  # fmt: skip
    assert code == 0, (out, err)
    first = orjson.loads(out)[0]
    assert first["performance"]["status"] == "ok" and first["performance"]["rows"] == sum(r["rows"] for r in records[2:])
    assert first["performance"]["quarantined"] == 3
    assert "3 bad labels line(s) quarantined" in err, err
    quarantine = [
        orjson.loads(line)
        for line in (tmp_path / "state" / "labels-quarantine.jsonl").read_bytes().splitlines()
    ]
    assert [(q["line"], q["source"]) for q in quarantine] == [(1, str(jsonl.resolve())), (2, str(jsonl.resolve())),
                                                              (3, str(jsonl.resolve()))]  # fmt: skip
    assert "not JSON" in quarantine[0]["reason"] and quarantine[0]["text"] == "{not json"
    assert "4 predicted row(s) but 1 label(s)" in quarantine[1]["reason"]
    assert "UTF-8" in quarantine[2]["reason"]
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_labels_quarantined_total{model="breast-cancer"} 3.0' in metrics

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,row,label\n" + f"{records[1]['id']},first,benign\n")
    code, out, err = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "state"),
                             "--labels", str(csv_path), "--once")  # fmt: skip
    assert code == 0, (out, err)
    last = orjson.loads((tmp_path / "state" / "labels-quarantine.jsonl").read_bytes().splitlines()[-1])
    assert last["line"] == 2 and last["source"] == str(csv_path.resolve())
    assert "'row' must be an integer" in last["reason"] and "first" in last["reason"]
    assert (
        'mlci_monitor_labels_quarantined_total{model="breast-cancer"} 4.0'
        in (tmp_path / "state" / "metrics.prom").read_text()
    )


def test_a_failing_cycle_does_not_stop_a_finite_run_but_sets_the_exit_code(
    bc: Project, tmp_path: Path
) -> None:
    logged(bc, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("request,truth\nr-0,benign\n")  # a header without id/label: every cycle fails
    code, out, err = monitor(str(bc.artifact), "--log-dir", str(tmp_path / "log"), "--state", str(tmp_path / "state"),
                             "--labels", str(labels), "--interval", "0", "--cycles", "3")  # fmt: skip
    assert code == 2, (out, err)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("cycle")] == ["cycle 1"] * 3
    assert err.count("needs a header with 'id' and 'label'") == 3, err
    errors = orjson.loads((tmp_path / "state" / "errors.json").read_bytes())
    assert errors["total"] == 3 and "needs a header" in errors["last"]["error"]
    assert (
        'mlci_monitor_cycle_errors_total{model="breast-cancer"} 3.0'
        in (tmp_path / "state" / "metrics.prom").read_text()
    )


def _wait(what: str, ok: Any, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the daemon exited with {proc.returncode} while waiting for {what}"
        if ok():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def test_the_daemon_survives_a_bad_cycle_and_recovers(bc: Project, tmp_path: Path) -> None:
    records = logged(bc, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("request,truth\n")  # wrong header: the cycles fail until it is fixed
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCI_")}
    env.update(MLCI_MONITOR_ERROR_BACKOFF_S="0.2", MLCI_MONITOR_BACKOFF_S="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlci", "monitor", str(bc.artifact), "--log-dir", str(tmp_path / "log"),
         "--state", str(state), "--labels", str(labels), "--interval", "0.2", "--cycles", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        errors = state / "errors.json"
        _wait(
            "failed cycles",
            lambda: errors.is_file() and orjson.loads(errors.read_bytes())["total"] >= 2,
            proc,
        )
        fixed = tmp_path / "labels.csv.new"
        fixed.write_text(
            "id,label\n" + "".join(f"{r['id']},{t}\n" for i, r in enumerate(records) for t in bc.truth[i * 4 : i * 4 + r["rows"]])
        )  # fmt: skip
        fixed.replace(labels)

        def joined() -> bool:
            report = state / "report.json"
            if not report.is_file():
                return False
            performance = orjson.loads(report.read_bytes()).get("performance") or {}
            return performance.get("status") == "ok"

        _wait("a cycle joining the fixed labels", joined, proc)
        assert orjson.loads((state / "report.json").read_bytes())["performance"]["rows"] == len(bc.holdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert re.search(r"cycle \d+ failed", err) and "needs a header with 'id' and 'label'" in err, err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_read_labels_reports_bad_lines_with_their_numbers(tmp_path: Path, suffix: str) -> None:
    from mlci.monitor.performance import read_labels

    path = tmp_path / f"labels{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"id,row,label\na,0,x\nb,one,y\nc,0,\xff\n")
    else:
        path.write_bytes(b'{"id": "a", "labels": ["x"]}\n[1, 2]\n{"id": "c", "labels": ["\xff"]}\n')
    got = read_labels(path)
    assert got.labels == {"a": ["x"]} and got.offset == path.stat().st_size
    lines = [3, 4] if suffix == ".csv" else [2, 3]  # the CSV header is line 1
    assert [(b.line, b.source) for b in got.bad] == [(n, str(path)) for n in lines]
    assert "UTF-8" in got.bad[1].reason


def test_the_index_is_trimmed_to_its_limit_only_past_half_as_much_again(bc: Project, tmp_path: Path) -> None:
    from mlci.monitor.service import Monitor

    records = [predict_records(bc.artifact, bc.holdout, batch=5, prefix=p) for p in ("a", "b")]
    write_log(tmp_path / "log", records[0])
    m = Monitor(bc.artifact, tmp_path / "log", tmp_path / "state", index_limit=24)
    index = tmp_path / "state" / "predictions.jsonl"

    def ids() -> list[str]:
        return [orjson.loads(line)["id"] for line in index.read_bytes().splitlines()]

    m.cycle()
    assert len(records[0]) <= 36 and ids() == [r["id"] for r in records[0]]  # ≤ 1.5 × 24: not trimmed
    write_log(tmp_path / "log", records[1])
    m.cycle()
    assert ids() == [r["id"] for r in records[1]][-24:]  # past 36: the most recent 24 requests kept
    assert orjson.loads((tmp_path / "state" / "state.json").read_bytes())["index_lines"] == 24
