"""A damaged state directory never stops the monitor loop (issue 13 item 15): a corrupt outbox file is set
aside, an errors.json that is no object or cannot be read is started afresh, and a cycle that fails after
its state was saved keeps its own number. Through the real CLI / Monitor on a real state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from mlci.cli import cli
from mlci.monitor.service import Monitor
from mlci.monitor.settings import Settings

from .conftest import Project, predict_records, write_log


def monitor(bc: Project, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlci monitor` on tmp_path's log and state, run in process."""
    result = CliRunner().invoke(
        cli,
        [
            "monitor",
            str(bc.artifact),
            "--log-dir",
            str(tmp_path / "log"),
            "--state",
            str(tmp_path / "state"),
            *args,
        ],
        env={"MLCI_MONITOR_BACKOFF_S": "0", "MLCI_MONITOR_ERROR_BACKOFF_S": "0"},
        catch_exceptions=False,
    )
    return result.exit_code, result.stdout, result.stderr


def failing_cycles(bc: Project, tmp_path: Path) -> list[str]:
    """Logged traffic and a labels file whose header makes every cycle fail; the CLI options for two cycles."""
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, batch=4, prefix="r"))
    labels = tmp_path / "labels.csv"
    labels.write_text("request,truth\nr-0,benign\n")  # no id/label columns
    return ["--labels", str(labels), "--interval", "0", "--cycles", "2"]


def test_a_corrupt_outbox_file_is_set_aside_not_fatal(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, batch=4, prefix="r"))
    outbox = tmp_path / "state" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "broken.json").write_bytes(b'{"id": "broken", "sta')  # e.g. a disk filled mid-write
    (outbox / "list.json").write_bytes(b"[1, 2]")  # JSON, but no alert document
    code, out, err = monitor(bc, tmp_path, "--once", "--json")
    assert code == 0, (out, err)
    assert orjson.loads(out)["status"] == "ok"
    assert sorted(p.name for p in outbox.iterdir()) == ["broken.json.bad", "list.json.bad"]
    assert err.count("set aside as") == 2 and "broken.json" in err, err
    metrics = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'mlci_monitor_outbox_quarantined{model="breast-cancer"} 2.0' in metrics


def test_an_errors_file_holding_a_list_is_started_afresh(bc: Project, tmp_path: Path) -> None:
    options = failing_cycles(bc, tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "errors.json").write_bytes(b"[]")
    code, out, err = monitor(bc, tmp_path, *options)
    assert code == 2, (out, err)
    assert err.count("needs a header with 'id' and 'label'") == 2, err
    assert "is a JSON array, not an object" in err, err
    errors: dict[str, Any] = orjson.loads((tmp_path / "state" / "errors.json").read_bytes())
    assert errors["total"] == 2 and errors["last"]["cycle"] == 1


def test_an_unreadable_errors_file_is_reported_and_replaced(bc: Project, tmp_path: Path) -> None:
    options = failing_cycles(bc, tmp_path)
    (tmp_path / "state").mkdir()
    # root reads any mode-000 file; reading /proc/self/mem at offset 0 fails with EIO for root too
    (tmp_path / "state" / "errors.json").symlink_to("/proc/self/mem")
    code, out, err = monitor(bc, tmp_path, *options)
    assert code == 2, (out, err)
    assert err.count("needs a header with 'id' and 'label'") == 2, err
    assert "cannot read" in err and "Input/output error" in err, err
    errors: dict[str, Any] = orjson.loads((tmp_path / "state" / "errors.json").read_bytes())
    assert errors["total"] == 2  # the link was replaced by a real file after the first failure


def test_a_cycle_failing_after_its_state_was_saved_keeps_its_number(bc: Project, tmp_path: Path) -> None:
    write_log(tmp_path / "log", predict_records(bc.artifact, bc.holdout, batch=4, prefix="r"))
    state = tmp_path / "state"
    state.mkdir()
    (state / "reports").write_text("not a directory")  # the per-cycle report is written after state.json
    m = Monitor(bc.artifact, tmp_path / "log", state, settings=Settings(error_backoff_s=0.0), sleep=lambda _s: None,
                log=lambda _m: None)  # fmt: skip
    (report,) = m.run(0.0, 1)
    assert report["status"] == "error" and orjson.loads((state / "state.json").read_bytes())["cycle"] == 1
    assert report["cycle"] == 1
    assert orjson.loads((state / "errors.json").read_bytes())["last"]["cycle"] == 1
