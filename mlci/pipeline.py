"""`mlci run`: the stages in order, in-process, each skipped when the digest of its inputs is unchanged.

train → export → evaluate build the artifact; smoke → gate judge it; push puts the artifact and its
verdict in the registry; with continuous deployment a passing candidate is then promoted and deployed
to staging and production. ``until`` stops the run after any of those steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from mlci.canonical import digest_of, sha256_file, write_json
from mlci.config import Config
from mlci.errors import CheckFailed, DataError, MlciError
from mlci.runs import append_run
from mlci.stages import RELEASE_STAGES, STAGES, Stage, code_digest, config_digest, factory_source, stage_keys
from mlci.workspace import Workspace, atomic_dir

__all__ = ["CandidateRejected", "RunResult", "STEPS", "StageEvent", "open_registry", "run_pipeline"]

SUMMARY_FILE = "stage.json"
STEPS = ("evaluate", "smoke", "gate", "push", "deploy")


@dataclass(frozen=True)
class StageEvent:
    """A stage starting (``status='running'``) or ending (``ok``/``failed``), for progress displays.

    A smoke test or gate that ran and judged the candidate bad ends ``failed`` too (``error`` says why);
    ``detail['note']``, when there, is one line for the display (what a push wrote, why a gate rejected).

    Before any stage, ``StageEvent('workspace', 'waiting', detail={'path', 'pid'})`` says the run waits
    for another run (``pid``, None if unknown) to release the workspace.
    """

    stage: str
    status: str
    duration_s: float = 0.0
    cache_hit: bool = False
    key: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class RunResult:
    """The outcome of one `mlci run`."""

    run_id: str
    status: str
    stages: list[StageEvent]
    digest: str | None
    artifact: Path | None
    metrics: dict[str, Any]
    duration_s: float
    verdict: dict[str, Any] | None = None
    release: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class CandidateRejected(CheckFailed):
    """The gate (or, with ``until='smoke'``, the smoke test) rejected the candidate.

    ``result`` is the whole run: verdict, digest, metrics and what was stored, for the caller to report.
    """

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def _judged_failure(stage: str, detail: dict[str, Any]) -> str | None:
    """Why a judging stage (smoke, gate) found the candidate bad, or None when it passed or judges nothing."""
    if detail.get("passed") is not False:
        return None
    if stage == "gate":
        return "candidate rejected: " + (", ".join(detail.get("failed") or []) or "the gate failed")
    return str(detail.get("reason") or f"the {stage} check failed")


def _record(event: StageEvent) -> dict[str, Any]:
    return {
        "stage": event.stage,
        "status": event.status,
        "duration_s": round(event.duration_s, 4),
        "cache_hit": event.cache_hit,
        "key": event.key,
        "error": event.error,
    }


def _entry_files(entry: Path) -> dict[str, str]:
    """sha256 of every file in a cache entry but its record, by relative path; a symlink or other oddity is named."""
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(entry):  # followlinks=False: a symlink is listed, never followed
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            relative = path.relative_to(entry).as_posix()
            if relative == SUMMARY_FILE:
                continue
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                files[relative] = "not a regular file"
            elif path.is_file():
                files[relative] = sha256_file(path)
    return files


def _seal(entry: Path, key: str, detail: dict[str, Any]) -> None:
    """Write the entry's record: the stage's summary, the key it was built for and the sha256 of each file."""
    write_json(entry / SUMMARY_FILE, {"key": key, "files": _entry_files(entry), "detail": detail})


def _unseal(entry: Path, stage: str, key: str) -> dict[str, Any] | None:
    """The summary of a cache entry whose files are still what its stage wrote for ``key``.

    None for an entry from before records held digests (it is rebuilt). A modified entry is refused:
    the cache may come from elsewhere (CI restores it), and a changed estimator.skops or model.onnx
    under an unchanged key would be used as if this config had produced it.
    """
    try:
        record = json.loads((entry / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        record = {"key": None, "files": {}}
    if isinstance(record, dict) and "files" not in record and "key" not in record:
        return None
    recorded = record.get("files") if isinstance(record, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    actual = _entry_files(entry)
    problems = [] if isinstance(record, dict) and record.get("key") == key else ["its record is not the one written for this key"]
    problems += [f"{name} changed" for name in sorted(actual.keys() & recorded.keys()) if actual[name] != recorded[name]]
    problems += [f"{name} added" for name in sorted(actual.keys() - recorded.keys())]
    problems += [f"{name} missing" for name in sorted(recorded.keys() - actual.keys())]
    if problems:
        raise DataError(
            f"The {stage} cache entry '{entry}' was modified after mlci wrote it: {'; '.join(problems)}. mlci does "
            "not use a modified cache entry (it could make a stage load something this config never produced). "
            f"Delete it (rm -rf '{entry}') or run `mlci run --no-cache`, which rebuilds every stage."
        )
    detail = record.get("detail")
    return detail if isinstance(detail, dict) else {}


def _publish(workspace: Workspace, evaluate_dir: Path) -> tuple[str, Path]:
    """Copy the evaluate output into the artifact store under its digest (no-op when already there)."""
    manifest = json.loads((evaluate_dir / "manifest.json").read_text())
    digest = manifest["digest"]
    target = workspace.artifact_dir(digest)
    if not target.exists():
        with atomic_dir(target) as tmp:
            for item in evaluate_dir.iterdir():
                if item.name != SUMMARY_FILE:
                    shutil.copyfile(item, tmp / item.name)
    return digest, target


class _Runner:
    """Runs stages with the cache, timing and events; remembers every event for the run record."""

    def __init__(self, config: Config, use_cache: bool, on_event: Callable[[StageEvent], None]) -> None:
        self.config = config
        self.workspace = Workspace(config.workspace)
        self.use_cache = use_cache
        self.on_event = on_event
        self.events: list[StageEvent] = []
        self.outputs: dict[str, Path] = {}
        self.details: dict[str, dict[str, Any]] = {}

    def _finish(self, event: StageEvent) -> None:
        self.events.append(event)
        self.on_event(event)

    def stage(self, stage: Stage, key: str, extra_inputs: dict[str, Path] | None = None) -> dict[str, Any]:
        out = self.workspace.stage_dir(stage.name, key)
        self.on_event(StageEvent(stage.name, "running", key=key))
        t0 = time.perf_counter()
        hit = False
        try:
            cached = _unseal(out, stage.name, key) if self.use_cache and (out / SUMMARY_FILE).is_file() else None
            hit = cached is not None
            if cached is not None:
                detail = cached
            else:
                # --no-cache, or a cache entry from an older layout. Safe to delete: the workspace lock
                # (see run_pipeline) means no other run is reading it.
                if out.exists():
                    shutil.rmtree(out)
                inputs = {n: self.outputs[n] for n in stage.needs} | (extra_inputs or {})
                with atomic_dir(out) as tmp:
                    detail = stage.fn(self.config, inputs, tmp)
                    _seal(tmp, key, detail)
        except BaseException as exc:
            self._finish(StageEvent(stage.name, "failed", time.perf_counter() - t0, False, key, error=str(exc) or type(exc).__name__))
            raise
        judged = _judged_failure(stage.name, detail)
        shown = detail if judged is None else {**detail, "note": judged}
        status = "ok" if judged is None else "failed"
        self._finish(StageEvent(stage.name, status, time.perf_counter() - t0, hit, key, shown, judged))
        self.outputs[stage.name] = out
        self.details[stage.name] = detail
        return detail

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """An uncached step with side effects (push, promote, deploy); ``written: False`` marks a cache hit."""
        self.on_event(StageEvent(name, "running"))
        t0 = time.perf_counter()
        try:
            detail = fn()
        except BaseException as exc:
            self._finish(StageEvent(name, "failed", time.perf_counter() - t0, error=str(exc) or type(exc).__name__))
            raise
        hit = detail.get("written") is False  # it found everything already done
        self._finish(StageEvent(name, "ok", time.perf_counter() - t0, hit, detail=detail))
        self.details[name] = detail
        return detail


def open_registry(config: Config) -> Any:
    """The configured registry store, with credentials from MLCI_REGISTRY_USERNAME/PASSWORD."""
    from mlci.registry import open_store, registry_settings_from_env

    assert config.registry is not None  # always set by parse_config
    username, password = registry_settings_from_env(os.environ)
    return open_store(
        config.registry.url, config.registry.repository, username=username, password=password,
        insecure=config.registry.insecure, base_dir=config.root,
    )


def _keep_report(runner: _Runner, stage: str, name: str, digest: str) -> None:
    """Copy a stage's report into the artifact's reports directory, where standalone `mlci gate` looks."""
    target = runner.workspace.reports_dir(digest) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, json.loads((runner.outputs[stage] / name).read_text()))


def _release(
    runner: _Runner, keys: dict[str, str], artifact: Path, digest: str, until: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """smoke → gate → push → (continuous) promote + deploy. Returns the verdict and what was released.

    A rejected candidate is pushed by digest only, with its verdict; it never gets the `candidate` tag.
    """
    config = runner.config
    smoke, gate = RELEASE_STAGES
    serving_code = code_digest(("mlci.serving", "mlci.release"))
    keys["smoke"] = digest_of({"stage": "smoke", "evaluate": keys["evaluate"], "code": serving_code, "config": config_digest(config, smoke.config_tables)})
    runner.stage(smoke, keys["smoke"])
    _keep_report(runner, "smoke", "smoke.json", digest)
    if until == "smoke":
        return None, {}

    from mlci.registry import pull_artifact, tag_digest

    store = open_registry(config)
    production = tag_digest(store, "production")
    extra: dict[str, Path] = {}
    if production is not None:
        extra["production"] = runner.workspace.root / "production" / production.replace(":", "-")
        pull_artifact(store, production, extra["production"])
    keys["gate"] = digest_of({
        "stage": "gate", "evaluate": keys["evaluate"], "smoke": keys["smoke"], "production": production,
        "config": config_digest(config, gate.config_tables), "data": keys["train"],
    })
    runner.stage(gate, keys["gate"], extra)
    _keep_report(runner, "gate", "verdict.json", digest)
    verdict = json.loads((runner.outputs["gate"] / "verdict.json").read_text())
    if until == "gate":
        return verdict, {}

    from mlci.release.promote import Release, push_judged

    push = partial(push_judged, store, artifact, verdict, reuse=runner.use_cache)
    released: dict[str, Any] = {"push": runner.step("push", push)}
    if until == "push" or not verdict["passed"] or not config.deploy.continuous_deployment:
        return verdict, released

    from mlci.release.flow import deploy_environment
    from mlci.release.promote import promote

    release = Release.from_env()
    for env in ("staging", "production"):
        runner.step(f"promote-{env}", partial(promote, store, env, verdict["candidate"], release=release, continuous=True))
        released[env] = runner.step(f"deploy-{env}", partial(deploy_environment, config, store, env, release))
    return verdict, released


def run_pipeline(
    config: Config,
    *,
    use_cache: bool = True,
    until: str | None = None,
    on_event: Callable[[StageEvent], None] = lambda _e: None,
) -> RunResult:
    """Run the pipeline up to ``until`` (default: push, or deploy with continuous deployment).

    Raises the failing stage's error; a failing gate raises CandidateRejected (a CheckFailed carrying the
    whole RunResult) after the candidate and its verdict are stored by digest (so the failure is on
    record in the registry; the `candidate` tag does not move).
    """
    until = until or ("deploy" if config.deploy.continuous_deployment else "push")
    if until not in STEPS:
        raise MlciError(f"--until must be one of {', '.join(STEPS)}; got {until!r}.")
    workspace = Workspace(config.workspace)

    def waiting(pid: int | None) -> None:
        on_event(StageEvent("workspace", "waiting", detail={"path": str(workspace.root), "pid": pid}))

    # One run at a time per workspace: a stage rebuilt by one run deletes the entry another reads.
    try:
        with workspace.lock(waiting):
            return _run(config, use_cache, until, on_event)
    except OSError as exc:
        if not exc.filename:  # a write() on a full disk names no file: say where
            exc.filename = str(workspace.root)
        raise


def _run(config: Config, use_cache: bool, until: str, on_event: Callable[[StageEvent], None]) -> RunResult:
    """The run itself, with the workspace held."""
    runner = _Runner(config, use_cache, on_event)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()
    data_path = config.data.path
    # A missing file gets no digest: the train stage then runs and reports it properly.
    data_digest = sha256_file(data_path) if data_path.is_file() else f"missing:{uuid.uuid4().hex}"
    keys = stage_keys(config, data_digest, code_digest(), factory_source(config))
    status, error = "ok", None
    digest: str | None = None
    artifact: Path | None = None
    verdict: dict[str, Any] | None = None
    released: dict[str, Any] = {}
    try:
        for stage in STAGES:
            runner.stage(stage, keys[stage.name])
        digest, artifact = _publish(runner.workspace, runner.outputs["evaluate"])
        write_json(runner.workspace.root / "latest.json", {"digest": digest, "path": str(artifact), "run_id": run_id})
        if until != "evaluate":
            verdict, released = _release(runner, keys, artifact, digest, until)
            if verdict is not None and not verdict["passed"]:
                failed = [f"{c['name']} ({c['reason']})" for c in verdict["checks"] if not c["passed"]]
                status, error = "failed", f"The gate failed for {digest[:19]}: " + "; ".join(failed)
            elif until == "smoke" and not runner.details["smoke"]["passed"]:
                reason = runner.details["smoke"]["reason"]
                status, error = "failed", f"The smoke test failed for {digest[:19]}: {reason}"
    except BaseException as exc:  # a bug or Ctrl-C still leaves an honest record
        status, error = "failed", str(exc) if isinstance(exc, MlciError) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        append_run(
            runner.workspace.runs_file,
            {
                "run_id": run_id,
                "config": str(config.path),
                "model": config.name,
                "status": status,
                "error": error,
                "duration_s": round(time.perf_counter() - started, 4),
                "stages": [_record(e) for e in runner.events],
                "digest": digest,
                "verdict": None if verdict is None else verdict["passed"],
            },
        )
    result = RunResult(
        run_id, status, runner.events, digest, artifact, runner.details["evaluate"].get("metrics", {}),
        time.perf_counter() - started, verdict, released, error,
    )
    if error is not None:
        raise CandidateRejected(error, result)
    return result
