"""One monitoring cycle, and the loop around it: log → windows → checks → policy → actions → report → alerts.

A cycle reads the log lines appended since the saved cursor (see :mod:`mlci.monitor.logtail`), keeps
the records of the monitored model (its digest; traffic of another version, e.g. after a rollback, is
counted and skipped), cuts them into windows of at most ``window`` rows, and runs drift and outlier
checks on each. With too few rows for a verdict the cursor is *not* advanced, so the rows are judged
together with the next cycle's instead of being dropped. Labels (when given) are joined to the logged
predictions by request id for the performance check. Every window's signals go through the policy;
its decisions become alerts in the outbox, a retrain-request document, or a call to an injected action
(``rollback``). The state (cursor, policy, labels bookkeeping) is saved before the outbox is delivered.

Labels are read per source: each labels file (by resolved path) has its own offset, restarted from the
beginning when the file at that path is another one (another inode, or shorter than the offset: replaced
or rotated). Every cycle indexes the logged predictions by request id, with or without ``--labels``, so
labels supplied later still join. A labels line that cannot be used (not JSON, not UTF-8, a bad CSV
``row``, a label count unlike the request's rows) is appended to ``labels-quarantine.jsonl`` and counted;
the other lines are used. A cycle that fails anyway is logged, counted in ``errors.json`` and retried after
a backoff by :meth:`Monitor.run`: it never ends the loop, even when errors.json or an outbox file is
damaged (see :meth:`Monitor._failed`, :meth:`Outbox.alerts`).

State directory::

    state.json          cursor, labels offsets per source, policy state, counters
    instance-id         random id of this monitor instance: alert ids (idempotency keys) start with it
    predictions.jsonl   request id → predicted outputs (the most recent ``index_limit`` requests or more,
                        up to 1.5 × as many before it is trimmed)
    labels-quarantine.jsonl  unusable labels lines: source, line number, text, reason
    errors.json         failed cycles: count, the last error
    outbox/             one JSON file per alert (see mlci.monitor.alerts)
    retrain/            retrain-request documents
    report.json         the last cycle's report (and reports/<cycle>.json)
    metrics.prom        Prometheus text format, for node_exporter's textfile collector
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlci.errors import MlciError
from mlci.monitor.alerts import Outbox, atomic_write_json
from mlci.monitor.drift import detect_drift
from mlci.monitor.errors import MonitorError
from mlci.monitor.logtail import read_new, start_cursor
from mlci.monitor.metrics import prometheus_text
from mlci.monitor.outliers import OutlierDetector, outlier_reference, outlier_test
from mlci.monitor.performance import BadLine, evaluate_performance, join_labels, read_labels
from mlci.monitor.policy import Decision, decide, new_state
from mlci.monitor.settings import Settings
from mlci.monitor.window import Window, WindowBuilder, traffic_note
from mlci.serving.predlog import BlobReader

__all__ = ["Action", "Monitor"]

Action = Callable[[dict[str, Any]], Mapping[str, Any]]

_MAX_SOURCES = 64  # labels sources remembered (offsets); the least recently read are forgotten beyond that


@dataclass(frozen=True)
class _Traffic:
    window: Window
    record_rows: list[int]

    @property
    def rows(self) -> int:
        return int(self.window.rows)


@dataclass
class _Artifact:
    digest: str
    name: str
    task: str
    features: list[dict[str, str]]
    classes: list[str]
    profile: dict[str, Any]


def with_evidence(profile: dict[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The profile plus the holdout figures the monitor compares with, from the manifest's evidence.

    Profile 3 keeps no measurements (they are evidence, outside the digest): the baseline metrics and the
    held-out outlier rate come from the verified manifest. An older profile still carries its own.
    """
    from mlci.model.artifact import evidence_of

    evidence = evidence_of(manifest)
    if "baseline_metrics" not in profile:
        profile["baseline_metrics"] = {k: v for k, v in evidence["metrics"].items() if k != "per_class"}
    outlier = profile.get("outlier")
    if isinstance(outlier, dict):
        for key, value in evidence["outlier"].items():
            outlier.setdefault(key, value)
    return profile


def _load_artifact(path: Path) -> tuple[_Artifact, Path]:
    from mlci.model.artifact import verify_artifact

    manifest = verify_artifact(path)
    profile = with_evidence(orjson.loads((path / "profile.json").read_bytes()), manifest)
    schema = manifest["schema"]
    return (
        _Artifact(
            manifest["digest"], manifest["name"], manifest.get("task", schema.get("task", "classification")),
            list(schema["features"]), [str(c) for c in schema.get("classes") or []], profile,
        ),
        path / "outlier.onnx",
    )


class _Parser:
    """Parses log lines as they are read; keeps the monitored model's rows as columns, counts the rest."""

    def __init__(self, artifact: _Artifact, blobs: BlobReader | None = None) -> None:
        self.digest = artifact.digest
        self._needle = artifact.digest.encode()
        self.builder = WindowBuilder(artifact.features, artifact.task, blobs=blobs)
        self.lines = self.skipped = self.bad = 0
        self._gc = gc.isenabled()
        gc.disable()  # millions of short-lived floats and lists: the cyclic GC would rescan them over and over

    def add(self, line: bytes) -> None:
        self.lines += 1
        if self._needle not in line and line[:1] == b"{" and line.rstrip()[-1:] == b"}":  # cheap pre-filter
            self.skipped += 1
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.bad += 1
            return
        if not isinstance(record, dict) or not isinstance(record.get("rows"), int):
            self.bad += 1
        elif record.get("digest") != self.digest:
            self.skipped += 1
        else:
            try:
                self.builder.add(record)
            except MonitorError:
                self.bad += 1  # e.g. a record from a server with another schema; counted, never fatal

    def finish(self) -> tuple[_Traffic, int, int]:
        if self._gc:
            gc.enable()
        return _Traffic(self.builder.build(), self.builder.record_rows), self.skipped, self.bad


class Monitor:
    """Watches one served artifact through its prediction log; :meth:`cycle` runs one pass."""

    def __init__(
        self,
        artifact: Path,
        log_dir: Path,
        state_dir: Path,
        *,
        settings: Settings | None = None,
        labels: Path | None = None,
        actions: Mapping[str, Action] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        http_client: Any = None,
        index_limit: int = 500_000,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.artifact_, outlier_path = _load_artifact(artifact)
        self.outlier_reference_ = outlier_reference(self.artifact_.profile)
        self.detector_ = OutlierDetector(
            outlier_path, self.artifact_.features, self.outlier_reference_.threshold
        )
        self.log_dir = log_dir
        self.state_dir = state_dir
        self.settings = settings = settings if settings is not None else Settings()
        self.labels = labels
        self.actions = dict(actions or {})
        self.clock = clock
        self.sleep = sleep
        self.http_client = http_client
        self.index_limit = index_limit
        self.log = log if log is not None else _stderr
        self._running: int | None = None  # the number of the cycle being run, once its state is read
        if not log_dir.is_dir():
            raise MonitorError(f"Log directory '{log_dir}' does not exist; pass the --log-dir the server writes to.")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.instance_id = _instance_id(state_dir)
        self.outbox = Outbox(
            state_dir / "outbox", max_failures=settings.max_failures, attempts_per_cycle=settings.attempts_per_cycle,
            backoff_s=settings.backoff_s, deadline_s=settings.delivery_deadline_s,
            reject_backoff_s=settings.reject_backoff_s, max_rejections=settings.max_rejections, clock=clock, sleep=sleep,
            log=self.log,
        )  # fmt: skip

    # -- state -------------------------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load_state(self) -> dict[str, Any]:
        if not self._state_file.is_file():
            return {"cursor": start_cursor(), "labels_sources": {}, "policy": new_state(), "cycle": 0, "rows_total": 0,
                    "pending_labels": {}, "labelled": {"true": [], "pred": []}, "artifact": self.artifact_.digest,
                    "labels_quarantined": 0, "delivery_failures": {}}  # fmt: skip
        try:
            state: dict[str, Any] = orjson.loads(self._state_file.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise MonitorError(f"State file '{self._state_file}' is not valid JSON ({exc}); delete it to start over.") from exc
        if state.get("artifact") != self.artifact_.digest:
            raise MonitorError(
                f"State directory '{self.state_dir}' belongs to {str(state.get('artifact'))[:19]}, not "
                f"{self.artifact_.digest[:19]}; use a fresh --state directory per monitored artifact."
            )
        return state

    # -- the cycle ---------------------------------------------------------------------------------
    def cycle(self) -> dict[str, Any]:
        """Run one monitoring pass; returns the report (also written to report.json)."""
        started = time.perf_counter()
        self._running = None
        state = self._load_state()
        cycle_no = self._running = int(state["cycle"]) + 1  # a failure later in the cycle keeps this number
        now = self.clock()
        with BlobReader(self.log_dir) as blobs:  # a batch's arrays are in the log's blob files
            parser = _Parser(self.artifact_, blobs)
            try:
                _, cursor = read_new(self.log_dir, state["cursor"], parser.add)  # streamed: never all lines at once
            finally:
                traffic, skipped, bad = parser.finish()  # re-enables the garbage collector whatever happened
        rows = traffic.rows
        lines = parser.lines
        windows: list[dict[str, Any]] = []
        decisions: list[tuple[str, Decision]] = []
        policy_state = state["policy"]
        s = self.settings
        advanced = False  # the lines are read for good (the cursor moves past them)
        if rows >= s.min_rows:
            state["cursor"], advanced = cursor, True
            state["rows_total"] += rows
            for number, (lo, hi) in enumerate(self._chunks(traffic.record_rows)):
                window_report = self._judge(traffic.window.slice(lo, hi))
                window_report["window"] = number
                windows.append(window_report)
                signals = {
                    "drift": window_report["drift"]["status"] == "drift" if window_report["drift"]["status"] != "insufficient" else None,
                    "outliers": window_report["outliers"]["status"] == "outliers" if window_report["outliers"]["status"] != "insufficient" else None,
                }
                policy_state, made = decide(policy_state, signals, now, s.policy())
                decisions.extend((f"w{number}", d) for d in made)
            self._index(traffic, state)  # also without labels: labels supplied later must find their rows
        elif lines and not rows:
            state["cursor"], advanced = cursor, True  # nothing of ours in them: never re-read
        synthetic, unmarked = parser.builder.synthetic_rows, parser.builder.unmarked_rows
        if advanced:  # count the synthetic rows of lines read for good once, not on every re-read
            state["synthetic_rows_total"] = state.get("synthetic_rows_total", 0) + synthetic
        performance = self._performance(state) if self.labels is not None else None
        if performance is not None and performance["status"] != "insufficient":
            policy_state, made = decide(policy_state, {"decay": performance["status"] == "decay"}, now, s.policy())
            decisions.extend(("perf", d) for d in made)
        state["policy"] = policy_state
        status = self._status(windows, performance, rows)
        report: dict[str, Any] = {
            "cycle": cycle_no,
            "time": now,
            "model": self.artifact_.name,
            "digest": self.artifact_.digest,
            "status": status,
            "message": self._message(status, windows, performance, rows) + traffic_note(synthetic, unmarked),
            "rows": rows,
            "synthetic_rows": synthetic,  # smoke tests, post-deploy checks: in no window
            "synthetic_rows_total": state.get("synthetic_rows_total", 0),
            "unmarked_rows": unmarked,  # judged, from a server older than the traffic mark
            "new_lines": lines,
            "skipped_other_model": skipped,
            "bad_lines": bad,
            "windows": windows,
            "drifted_features": sorted({f for w in windows for f in w["drift"]["drifted_features"]}),
            "performance": performance,
            "policy": {c: {k: v for k, v in st.items() if k != "done"} for c, st in policy_state["conditions"].items()},
        }
        report["actions"] = self._act(cycle_no, decisions, report)
        state["cycle"] = cycle_no
        atomic_write_json(self._state_file, state)
        delivery = self.outbox.deliver(s.webhook, client=self.http_client)
        report["alerts"] = {"delivered": delivery.delivered, "pending": delivery.pending, "dead": delivery.dead,
                            "attempts": delivery.attempts, "failures": delivery.failures}  # fmt: skip
        if delivery.failed_attempts:
            counts = state.setdefault("delivery_failures", {})
            for kind, n in delivery.failed_attempts.items():
                counts[kind] = counts.get(kind, 0) + n
            atomic_write_json(self._state_file, state)  # the counters only: saved again after delivery
        report["duration_s"] = round(time.perf_counter() - started, 4)
        atomic_write_json(self.state_dir / "reports" / f"{cycle_no:06d}.json", report)
        atomic_write_json(self.state_dir / "report.json", report)
        self._write_metrics(report, state)
        return report

    def run(
        self, interval_s: float, cycles: int | None, on_report: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Run ``cycles`` cycles (forever when None), ``interval_s`` apart; returns the reports (each is
        also passed to ``on_report`` as soon as its cycle ends).

        A cycle that raises does not end the loop: the error is logged, counted (``errors.json``, the
        ``mlci_monitor_cycle_errors_total`` metric) and its report has ``status: "error"``; the next try
        waits ``error_backoff_s`` doubling per failure in a row (never less than ``interval_s``, at most
        ten minutes unless the interval is longer).
        """
        reports: list[dict[str, Any]] = []
        count = failing = 0
        wait = interval_s
        while cycles is None or count < cycles:
            if count:
                self.sleep(wait)
            try:
                report = self.cycle()
                failing = 0
                wait = interval_s
            except Exception as exc:  # one bad cycle must not stop the monitor; it says so and backs off
                failing += 1
                wait = max(interval_s, min(self.settings.error_backoff_s * 2 ** (failing - 1), 600.0))
                report = self._failed(exc, failing, wait)
            count += 1
            if on_report is not None:
                on_report(report)
            if cycles is not None:
                reports.append(report)
        return reports

    def _failed(self, exc: Exception, in_a_row: int, wait: float) -> dict[str, Any]:
        """Log, count and report a cycle that raised ``exc``; never raises itself (a damaged state
        directory must not end the loop): whatever goes wrong here is said, then the text is logged and
        a minimal report returned."""
        text = f"{type(exc).__name__}: {exc}"
        cycle_no = self._failed_cycle_no()
        now = self.clock()
        total = in_a_row
        path = self.state_dir / "errors.json"
        try:
            total = self._error_total(path) + 1
            atomic_write_json(path, {"total": total, "last": {"time": now, "cycle": cycle_no, "error": text}})
            self._write_metrics(None, None, cycle_errors=total)
        except Exception as inner:  # the count or the metrics are lost for this cycle; the loop goes on
            self.log(
                f"[mlci monitor] could not record the failed cycle in '{path}' ({type(inner).__name__}: {inner})"
            )
        self.log(
            f"[mlci monitor] cycle {cycle_no} failed ({in_a_row} in a row, {total} in total; {path}): {text}; "
            f"next try in {wait:g} s"
        )
        return {
            "cycle": cycle_no, "time": now, "model": self.artifact_.name, "digest": self.artifact_.digest,
            "status": "error", "error": text, "exit_code": exc.exit_code if isinstance(exc, MlciError) else 1,
            "message": f"cycle failed: {text}", "rows": 0, "windows": [], "actions": [],
            "alerts": {"delivered": [], "pending": [], "dead": [], "attempts": 0, "failures": []},
        }  # fmt: skip

    def _failed_cycle_no(self) -> int:
        """The number of the cycle that just failed: the one :meth:`cycle` was running (state.json may
        already hold it, when the failure came after it was saved), else one after the saved cycle."""
        if self._running is not None:
            return self._running
        with contextlib.suppress(Exception):
            return int(orjson.loads(self._state_file.read_bytes())["cycle"]) + 1
        return 1

    def _error_total(self, path: Path) -> int:
        """Failed cycles counted so far in ``path`` (errors.json); 0, said on stderr, when it is unusable."""
        try:
            errors = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, orjson.JSONDecodeError) as exc:
            self.log(f"[mlci monitor] cannot read '{path}' ({exc}); counting failed cycles afresh")
            return 0
        total = errors.get("total") if isinstance(errors, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            kind = "a JSON array" if isinstance(errors, list) else "no object with an integer 'total'"
            self.log(f"[mlci monitor] '{path}' is {kind}, not an object with a 'total'; counting afresh")
            return 0
        return total

    # -- pieces ------------------------------------------------------------------------------------
    def _chunks(self, record_rows: list[int]) -> list[tuple[int, int]]:
        """Row ranges of at most ``window`` rows on request boundaries; a short tail joins the window before it."""
        bounds: list[list[int]] = [[0, 0]]
        for rows in record_rows:
            lo, hi = bounds[-1]
            if hi > lo and hi - lo + rows > self.settings.window:
                bounds.append([hi, hi])
            bounds[-1][1] += rows
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.settings.min_rows:
            tail = bounds.pop()
            bounds[-1][1] = tail[1]
        return [(lo, hi) for lo, hi in bounds]

    def _judge(self, window: Window) -> dict[str, Any]:
        a = self.artifact_
        drift = detect_drift(
            a.profile, window.columns, labels=window.labels, probabilities=window.probabilities, values=window.values,
            settings=self.settings.drift(),
        )
        flags, scores = self.detector_.score(window.columns)
        reference = self.outlier_reference_
        outliers = outlier_test(
            flags, reference.rate, reference=reference.source, alpha=self.settings.alpha,
            min_increase=self.settings.outlier_min_increase, min_rows=self.settings.min_rows, scores=scores,
        )
        return {
            "rows": window.rows, "first_ts": window.first_ts, "last_ts": window.last_ts,
            "drift": drift.to_json(), "outliers": outliers.to_json(),
        }  # fmt: skip

    def _index_file(self) -> Path:
        return self.state_dir / "predictions.jsonl"

    def _index(self, traffic: _Traffic, state: dict[str, Any]) -> None:
        """Remember each request's predicted outputs so that labels arriving later can be joined.

        One line per logged request (its rows are contiguous: ``record_rows`` gives the boundaries). The
        file's line count is kept in the state, so it is read back only to trim it, when it passes 1.5 ×
        ``index_limit`` lines: then the most recent ``index_limit`` are kept.
        """
        window = traffic.window
        predicted = window.labels if self.artifact_.task == "classification" else window.values
        if predicted is None or not window.rows:
            return
        values = predicted.tolist()
        ends = np.cumsum(traffic.record_rows).tolist()
        starts = [0, *ends[:-1]]
        lines = [orjson.dumps({"id": window.ids[lo], "p": values[lo:hi]}) for lo, hi in zip(starts, ends, strict=True)]
        path = self._index_file()
        count = state.get("index_lines")
        if not isinstance(count, int) or not path.is_file():  # an older state, or the file was removed
            count = sum(1 for _ in path.open("rb")) if path.is_file() else 0
        with path.open("ab") as f:
            f.write(b"\n".join(lines) + b"\n")
        count += len(lines)
        if count > self.index_limit * 3 // 2:
            kept = path.read_bytes().splitlines()[-self.index_limit :]
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(b"\n".join(kept) + b"\n")
            tmp.replace(path)
            count = len(kept)
        state["index_lines"] = count

    def _source(self, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The labels file's key (resolved path) and its read position, restarted when it is another file."""
        assert self.labels is not None
        key = str(self.labels.resolve())
        info = os.stat(key)
        sources: dict[str, dict[str, Any]] = state.setdefault("labels_sources", {})
        legacy = state.pop("labels_offset", None)  # a state written before offsets were kept per source
        if legacy and not sources:
            sources[key] = {"dev": info.st_dev, "inode": info.st_ino, "offset": int(legacy), "line": 1}
        source = sources.get(key)
        same = source is not None and (source["dev"], source["inode"]) == (info.st_dev, info.st_ino)
        if source is None or not same or info.st_size < source["offset"]:
            source = {"dev": info.st_dev, "inode": info.st_ino, "offset": 0, "line": 1}  # new, replaced, rotated
        source["read"] = self.clock()
        sources.pop(key, None)
        sources[key] = source  # most recently read last
        for stale in list(sources)[:-_MAX_SOURCES]:
            del sources[stale]
        return key, source

    def _quarantine(self, bad: list[BadLine]) -> None:
        """Append unusable labels lines to labels-quarantine.jsonl (source, line, text, reason)."""
        if not bad:
            return
        now = self.clock()
        with (self.state_dir / "labels-quarantine.jsonl").open("ab") as f:
            f.write(b"".join(orjson.dumps({"time": now, "source": b.source, "line": b.line, "reason": b.reason,
                                           "text": b.text}) + b"\n" for b in bad))  # fmt: skip
            f.flush()
            os.fsync(f.fileno())

    def _read_labels(self, state: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[BadLine]]:
        """New labels of the labels file as pending entries ({labels, source, line}), and its bad lines."""
        assert self.labels is not None
        if not self.labels.is_file():
            return {}, []  # labels arrive later than predictions: a file not written yet is not an error
        key, source = self._source(state)
        got = read_labels(Path(key), int(source["offset"]), int(source["line"]))
        source.update(offset=got.offset, line=got.line)
        fresh = {k: {"labels": v, "source": key, "line": got.lines.get(k)} for k, v in got.labels.items()}
        return fresh, got.bad

    def _performance(self, state: dict[str, Any]) -> dict[str, Any]:
        fresh, bad = self._read_labels(state)
        pending: dict[str, dict[str, Any]] = {  # older states kept a bare list of labels
            k: v if isinstance(v, dict) else {"labels": v, "source": None, "line": None}
            for k, v in state["pending_labels"].items()
        }
        pending.update(fresh)
        index: dict[str, list[Any]] = {}
        if self._index_file().is_file():
            for line in self._index_file().read_bytes().splitlines():
                if line:
                    doc = orjson.loads(line)
                    index[doc["id"]] = doc["p"]

        def mismatch(request_id: str, reason: str) -> None:
            entry = pending[request_id]
            text = orjson.dumps({"id": request_id, "labels": entry["labels"]}).decode()
            where = f"line {entry['line']} " if entry["line"] else ""
            bad.append(BadLine(str(entry["source"]), entry["line"] or 0, text[:1000], f"{where}{reason}"))

        labels = {k: v["labels"] for k, v in pending.items()}
        y_true, y_pred, unmatched = join_labels(labels, index, on_mismatch=mismatch)
        bad.sort(key=lambda b: (b.source, b.line))
        self._quarantine(bad)
        state["labels_quarantined"] = int(state.get("labels_quarantined", 0)) + len(bad)
        # Labels can arrive before their prediction is logged (or read); keep a bounded number waiting.
        state["pending_labels"] = {k: pending[k] for k in unmatched[-self.index_limit :]}
        labelled = state["labelled"]
        labelled["true"].extend(y_true)
        labelled["pred"].extend(y_pred)
        a = self.artifact_
        result = evaluate_performance(
            a.task, a.profile.get("baseline_metrics", {}), labelled["true"], labelled["pred"], classes=a.classes,
            alpha=self.settings.alpha, margin=self.settings.decay_margin, min_rows=self.settings.min_labelled,
        ).to_json()
        if result["status"] != "insufficient":
            state["labelled"] = {"true": [], "pred": []}
        result["waiting_labels"] = len(state["pending_labels"])
        result["quarantined"] = len(bad)
        result["quarantined_first"] = f"{bad[0].source}: {bad[0].reason}" if bad else None
        return dict(result)

    @staticmethod
    def _status(windows: list[dict[str, Any]], performance: dict[str, Any] | None, rows: int) -> str:
        found = [k for k, hit in (
            ("decay", performance is not None and performance["status"] == "decay"),
            ("drift", any(w["drift"]["status"] == "drift" for w in windows)),
            ("outliers", any(w["outliers"]["status"] == "outliers" for w in windows)),
        ) if hit]  # fmt: skip
        if found:
            return found[0]
        return "ok" if windows or (performance is not None and performance["status"] == "ok") else "insufficient"

    def _message(self, status: str, windows: list[dict[str, Any]], performance: dict[str, Any] | None, rows: int) -> str:
        if not windows:
            text = f"need ≥ {self.settings.min_rows} rows for a verdict, have {rows}; they are kept for the next cycle"
        else:
            text = "; ".join(f"window {w['window']} ({w['rows']} rows): {w['drift']['message']}; {w['outliers']['message']}" for w in windows)
        if performance is not None:
            text += f"; performance: {performance['message']}"
        return text

    def _act(self, cycle_no: int, decisions: list[tuple[str, Decision]], report: dict[str, Any]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        a = self.artifact_
        summary = {k: report[k] for k in ("cycle", "time", "model", "digest", "status", "message", "drifted_features")}
        for where, d in decisions:
            entry: dict[str, Any] = {"condition": d.condition, "action": d.action, "reason": d.reason, "suppressed": d.suppressed}
            if not d.suppressed:
                # unique per monitor instance: a fresh state directory also starts at cycle 1
                alert_id = "-".join((self.instance_id, a.digest[7:19], f"{cycle_no:06d}", where, d.condition, d.action))
                event: dict[str, Any] = {"event": d.action if d.action != "alert" else "alert", "condition": d.condition, "reason": d.reason, **summary}
                if d.action == "retrain":
                    path = self.state_dir / "retrain" / f"{alert_id}.json"
                    atomic_write_json(path, {"request": "retrain", "condition": d.condition, "reason": d.reason, **summary})
                    entry["request"] = str(path)
                    event["event"] = "retrain_requested"
                if d.action in self.actions and d.action in ("rollback", "retrain"):
                    try:
                        entry["result"] = dict(self.actions[d.action]({**summary, "condition": d.condition, "reason": d.reason}))
                        entry["ok"] = True
                    except Exception as exc:  # the monitor reports a failed action; it must not stop watching
                        entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                elif d.action == "rollback":
                    entry.update(ok=False, error="no rollback action configured (mlci monitor --rollback-config mlci.toml)")
                event["result"] = {k: entry[k] for k in ("ok", "result", "error", "request") if k in entry}
                entry["alert_id"] = self.outbox.put(event, alert_id)
            done.append(entry)
        return done

    def _write_metrics(
        self, report: dict[str, Any] | None, state: dict[str, Any] | None, cycle_errors: int | None = None
    ) -> None:
        """metrics.prom from the report and state (after a failed cycle: the last good report, if any)."""
        if report is None:
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError):
                report = orjson.loads((self.state_dir / "report.json").read_bytes())
                state = orjson.loads(self._state_file.read_bytes())
        if cycle_errors is None:
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                cycle_errors = int(orjson.loads((self.state_dir / "errors.json").read_bytes())["total"])
        state = state or {}
        counters = {
            "cycle_errors": cycle_errors or 0,
            "labels_quarantined": int(state.get("labels_quarantined", 0)),
            "delivery_failures": dict(state.get("delivery_failures", {})),
        }
        rows_total = int(state.get("rows_total", 0))
        alerts = self.outbox.alerts()  # first: files it sets aside are counted below
        counters["outbox_quarantined"] = self.outbox.quarantined
        text = prometheus_text(report, rows_total, alerts, counters, self.artifact_.name)
        tmp = self.state_dir / ".metrics.prom.tmp"
        tmp.write_text(text)
        tmp.replace(self.state_dir / "metrics.prom")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _instance_id(state_dir: Path) -> str:
    """This monitor instance's random id, made once and kept in ``state_dir/instance-id``."""
    path = state_dir / "instance-id"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text:
        text = secrets.token_hex(8)
        tmp = state_dir / ".instance-id.tmp"
        tmp.write_text(text + "\n")
        tmp.replace(path)
    return text
