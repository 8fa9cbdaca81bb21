"""`mlci run`: the stages in order, in-process, each skipped when the digest of its inputs is unchanged."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlci.canonical import sha256_file, write_json
from mlci.config import Config
from mlci.errors import MlciError
from mlci.runs import append_run
from mlci.stages import STAGES, code_digest, factory_source, stage_keys
from mlci.workspace import Workspace, atomic_dir

__all__ = ["RunResult", "StageEvent", "run_pipeline"]

SUMMARY_FILE = "stage.json"


@dataclass(frozen=True)
class StageEvent:
    """A stage starting (``status='running'``) or ending (``ok``/``failed``), for progress displays."""

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


def _record(event: StageEvent) -> dict[str, Any]:
    return {
        "stage": event.stage,
        "status": event.status,
        "duration_s": round(event.duration_s, 4),
        "cache_hit": event.cache_hit,
        "key": event.key,
        "error": event.error,
    }


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


def run_pipeline(
    config: Config,
    *,
    use_cache: bool = True,
    on_event: Callable[[StageEvent], None] = lambda _e: None,
) -> RunResult:
    """Run train → export → evaluate; return the artifact's digest and path. Raises the failing stage's error."""
    workspace = Workspace(config.workspace)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()
    data_path = config.data.path
    # A missing file gets no digest: the train stage then runs and reports it properly.
    data_digest = sha256_file(data_path) if data_path.is_file() else f"missing:{uuid.uuid4().hex}"
    keys = stage_keys(config, data_digest, code_digest(), factory_source(config))
    events: list[StageEvent] = []
    outputs: dict[str, Path] = {}
    details: dict[str, dict[str, Any]] = {}
    status, error = "ok", None
    try:
        for stage in STAGES:
            key = keys[stage.name]
            out = workspace.stage_dir(stage.name, key)
            on_event(StageEvent(stage.name, "running", key=key))
            t0 = time.perf_counter()
            hit = use_cache and (out / SUMMARY_FILE).is_file()
            try:
                if hit:
                    detail = json.loads((out / SUMMARY_FILE).read_text())
                else:
                    if out.exists():  # --no-cache, or a cache entry from an older layout
                        shutil.rmtree(out)
                    with atomic_dir(out) as tmp:
                        detail = stage.fn(config, {n: outputs[n] for n in stage.needs}, tmp)
                        write_json(tmp / SUMMARY_FILE, detail)
            except BaseException as exc:
                event = StageEvent(stage.name, "failed", time.perf_counter() - t0, False, key, error=str(exc) or type(exc).__name__)
                events.append(event)
                on_event(event)
                raise
            event = StageEvent(stage.name, "ok", time.perf_counter() - t0, hit, key, detail)
            events.append(event)
            on_event(event)
            outputs[stage.name] = out
            details[stage.name] = detail
        digest, artifact = _publish(workspace, outputs["evaluate"])
        write_json(workspace.root / "latest.json", {"digest": digest, "path": str(artifact), "run_id": run_id})
    except MlciError as exc:
        status, error = "failed", str(exc)
        raise
    except BaseException as exc:  # a bug or Ctrl-C still leaves an honest record
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        duration = time.perf_counter() - started
        append_run(
            workspace.runs_file,
            {
                "run_id": run_id,
                "config": str(config.path),
                "model": config.name,
                "status": status,
                "error": error,
                "duration_s": round(duration, 4),
                "stages": [_record(e) for e in events],
                "digest": details.get("evaluate", {}).get("digest"),
            },
        )
    return RunResult(run_id, status, events, digest, artifact, details["evaluate"].get("metrics", {}), duration)
