"""The `mlci` command line: parse, call a stage function, print. Exit 0 ok, 1 a check failed, 2 bad input.

Only click and the standard library are imported at module level: `mlci --help` stays fast, and the
ML libraries load inside the commands that need them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mlci import __version__
from mlci.config import Config, load_config
from mlci.errors import MlciError, storage_error

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class _Failure(click.ClickException):
    """An MlciError as click reports it: `Error: <message>` on stderr and the error's exit code."""

    def __init__(self, error: MlciError) -> None:
        super().__init__(str(error))
        # click declares exit_code on the class; each MlciError carries its own, so set it per instance.
        setattr(self, "exit_code", error.exit_code)  # noqa: B010


class _Group(click.Group):
    """Maps every MlciError (and every write the machine refuses) to its exit code in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlciError as exc:
            raise _Failure(exc) from exc
        except OSError as exc:  # a full disk, a read-only workspace, a denied write: named, not a traceback
            named = storage_error(exc)
            if named is None:
                raise
            raise _Failure(named) from exc


def config_option(fn: F) -> F:
    """--config and --workspace, shared by the commands that read `mlci.toml`."""
    fn = click.option(
        "--workspace",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Workspace directory (default: [workspace] path, or .mlci beside mlci.toml).",
    )(fn)
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("mlci.toml"),
        show_default=True,
        help="The model repository's config file.",
    )(fn)


def json_option(fn: F) -> F:
    """--json: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(fn)


def _emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str) if as_json else text)


def _load(config_path: Path, workspace: Path | None) -> Config:
    """mlci.toml, for the commands that build nothing (release, monitor, runs): numerics do not apply."""
    return load_config(config_path, workspace)


def _load_build(config_path: Path, workspace: Path | None) -> Config:
    """mlci.toml for a command that builds (run, train, export, evaluate), with its [reproducibility]
    numerics put in force before the build loads numpy."""
    from mlci.numerics import prepare, restart_command

    config = load_config(config_path, workspace)
    restart = restart_command(config.reproducibility.numerics, sys.orig_argv[1:]) if _PROGRAM else None
    if restart is not None:  # glibc takes its tunables only when a process starts: start again, once
        argv, env = restart
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)
    prepare(config.reproducibility.numerics)
    return config


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlci")
def cli() -> None:
    """mlci: take a model from a commit to production, the same way on a laptop and in CI.

    Stages (each reads and writes directories, so they also run one by one in containers):
    train → export → evaluate.  `mlci run` runs them all in-process with a stage cache.
    """


@cli.command()
@config_option
@click.option("--no-cache", is_flag=True, help="Run every stage even when its inputs are unchanged.")
@click.option(
    "--until",
    type=click.Choice(["evaluate", "smoke", "gate", "push", "deploy"]),
    default=None,
    help="Stop after this step (default: push; deploy when [deploy] continuous_deployment = true).",
)
@json_option
def run(config_path: Path, workspace: Path | None, no_cache: bool, until: str | None, as_json: bool) -> None:
    """Run the pipeline in-process: train → export → evaluate → smoke → gate → push (→ promote/deploy).

    A rejected candidate still gets its report (the same lines, or with --json the same document with
    ``status: failed``), then exit 1.
    """
    from mlci.pipeline import CandidateRejected, run_pipeline
    from mlci.progress import Progress

    config = _load_build(config_path, workspace)
    progress = Progress(sys.stderr if as_json else sys.stdout)
    try:
        result = run_pipeline(config, use_cache=not no_cache, until=until, on_event=progress)
    except CandidateRejected as exc:
        _emit(as_json, _run_payload(exc.result), _run_text(exc.result, config))
        raise
    _emit(as_json, _run_payload(result), _run_text(result, config))


def _run_payload(result: Any) -> dict[str, Any]:
    """`mlci run --json`: the whole result, on success and on a rejected candidate alike."""
    return {
        "run_id": result.run_id,
        "status": result.status,
        "error": result.error,
        "digest": result.digest,
        "artifact": str(result.artifact),
        "metrics": result.metrics,
        "verdict": result.verdict,
        "release": result.release,
        "duration_s": round(result.duration_s, 3),
        "stages": [
            {"stage": e.stage, "status": e.status, "duration_s": round(e.duration_s, 4), "cache_hit": e.cache_hit}
            for e in result.stages
        ],
    }


def _push_line(push: dict[str, Any], config: Config) -> str:
    """What the push did: the tags it moved, or that a rejected candidate was stored by digest only."""
    where = config.registry.url if config.registry else ""
    if push.get("rejected"):
        kept = "(rejected: not tagged candidate; kept by digest with its verdict)"
        return f"stored    {push['artifact_digest'][:19]} → {where} {kept}"
    again = "" if push.get("written", True) else " (already there, nothing written)"
    return f"pushed    {push['tags'][0]} → {where}{again}"


def _gate_line(verdict: dict[str, Any]) -> str:
    if verdict["first_run"]:
        scope = " (first release: no production model)"
    elif verdict.get("compared_rows") is not None:
        scope = f" (vs production on {verdict['compared_rows']} rows neither model trained on)"
    else:
        scope = ""
    return f"gate      {'passed' if verdict['passed'] else 'FAILED'}{scope}"


def _run_text(result: Any, config: Config) -> str:
    """`mlci run`'s summary lines."""
    from mlci.release.flow import describe_deployment

    hits = sum(e.cache_hit for e in result.stages)
    metrics = "  ".join(
        f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float) and k != "model_size_bytes"
    )
    verdict = result.verdict
    return "\n".join(
        [
            f"artifact  {result.digest}",
            f"path      {result.artifact}",
            f"metrics   {metrics}",
            *([_gate_line(verdict)] if verdict else []),
            *([_push_line(result.release["push"], config)] if "push" in result.release else []),
            *[describe_deployment(env, result.release[env]) for env in ("staging", "production") if env in result.release],
            f"run       {result.run_id} {result.status} in {result.duration_s:.2f}s "
            f"({len(result.stages)} stages, {hits} from cache)",
        ]
    )


def _out_dir(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise click.UsageError(f"Output directory '{path}' already exists and is not empty; choose another --out or remove it.")
    if path.exists():
        path.rmdir()
    return path


def _stage_command(name: str, config_path: Path, workspace: Path | None, out: Path, inputs: dict[str, Path | None], as_json: bool) -> None:
    from mlci.stages import STAGES
    from mlci.workspace import atomic_dir

    config = _load_build(config_path, workspace)
    stage = next(s for s in STAGES if s.name == name)
    resolved = {n: p for n, p in inputs.items() if p is not None}
    with atomic_dir(_out_dir(out)) as tmp:
        detail = stage.fn(config, resolved, tmp)
    text = f"{name}: ok → {out}\n" + "\n".join(f"  {k}: {v}" for k, v in detail.items() if not isinstance(v, dict))
    _emit(as_json, {"stage": name, "out": str(out), **detail}, text)


_dir_in = click.Path(exists=True, file_okay=False, path_type=Path)
_dir_out = click.Path(file_okay=False, path_type=Path)


@cli.command()
@config_option
@click.option("--out", type=_dir_out, required=True, help="New directory for estimator.skops, split.json, train.json.")
@json_option
def train(config_path: Path, workspace: Path | None, out: Path, as_json: bool) -> None:
    """Validate the data, split it (seeded, stable) and fit the estimator."""
    _stage_command("train", config_path, workspace, out, {}, as_json)


@cli.command()
@config_option
@click.option("--train", "train_dir", type=_dir_in, required=True, help="Output directory of `mlci train`.")
@click.option("--out", type=_dir_out, required=True, help="New directory for model.onnx and parity.json.")
@json_option
def export(config_path: Path, workspace: Path | None, train_dir: Path, out: Path, as_json: bool) -> None:
    """Convert to ONNX with skl2onnx; exit 1 if onnxruntime disagrees with scikit-learn on the holdout."""
    _stage_command("export", config_path, workspace, out, {"train": train_dir}, as_json)


@cli.command()
@config_option
@click.option("--train", "train_dir", type=_dir_in, required=True, help="Output directory of `mlci train`.")
@click.option("--export", "export_dir", type=_dir_in, required=True, help="Output directory of `mlci export`.")
@click.option("--out", type=_dir_out, required=True, help="New directory for the artifact.")
@json_option
def evaluate(config_path: Path, workspace: Path | None, train_dir: Path, export_dir: Path, out: Path, as_json: bool) -> None:
    """Metrics, latency, monitoring profile and outlier model, measured with onnxruntime; writes the artifact."""
    _stage_command("evaluate", config_path, workspace, out, {"train": train_dir, "export": export_dir}, as_json)


@cli.command()
@click.argument("artifact", type=_dir_in)
@click.option(
    "--against", "other", type=_dir_in, default=None,
    help="Another artifact of the same inputs: check the two are functionally equivalent (exit 1 if not).",
)
@click.option(
    "--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="With --against: the data file ARTIFACT was trained on (default: [data] path of --config).",
)
@config_option
@json_option
def verify(artifact: Path, other: Path | None, data: Path | None, config_path: Path, workspace: Path | None, as_json: bool) -> None:
    """Check an artifact directory: its identity (exactly the artifact's files, each one's sha256, the
    digest, ONNX models that keep no tensor data in external files), then its evidence (the measured
    metrics, parity and latency, sealed to that identity by evidence_digest).

    With --against OTHER: whether two builds whose bytes differ are the same model in function (same
    schema and input digests, holdout predictions within the parity tolerance, labels 100% equal).
    """
    from mlci.model.artifact import check_models, verify_artifact

    if other is not None:
        _verify_against(artifact, other, data or _load(config_path, workspace).data.path, as_json)
        return
    manifest = verify_artifact(artifact)  # raises on a broken identity, then (EvidenceError) on broken evidence
    check_models(artifact)
    sealed = manifest.get("evidence_digest")
    evidence = {"ok": True, "digest": sealed} if sealed else {"ok": True, "digest": None, "note": "schema 1: figures in the identity"}
    text = [f"ok {manifest['digest']}", f"  identity ok  {manifest['digest']}",
            f"  evidence ok  {sealed}" if sealed else "  evidence ok  (schema 1: metrics and parity are part of the identity)"]  # fmt: skip
    payload = {"digest": manifest["digest"], "ok": True, "identity": {"ok": True, "digest": manifest["digest"]}, "evidence": evidence}
    _emit(as_json, payload, "\n".join(text))


def _verify_against(artifact: Path, other: Path, data: Path, as_json: bool) -> None:
    """`mlci verify --against`: the report, then exit 1 when the two are not equivalent."""
    from mlci.errors import CheckFailed
    from mlci.model.equivalence import compare_artifacts, equivalence_text

    result = compare_artifacts(artifact, other, data)
    _emit(as_json, result.to_json(), equivalence_text(result))
    if not result.equivalent:
        raise CheckFailed(f"'{artifact}' and '{other}' are not functionally equivalent: {'; '.join(result.differed)}.")


@cli.command()
@config_option
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many recent runs to list.")
@click.option("--prometheus", is_flag=True, help="Print the per-stage figures in the Prometheus text format instead.")
@json_option
def runs(config_path: Path, workspace: Path | None, limit: int, prometheus: bool, as_json: bool) -> None:
    """List recent runs and per-stage duration percentiles, failure and cache-hit rates."""
    from mlci.runs import prometheus_text, read_runs, stage_stats
    from mlci.workspace import Workspace

    if workspace is not None and not config_path.is_file():
        config, root = None, workspace  # a workspace alone is enough to read its run records
    else:
        config = _load(config_path, workspace)
        root = config.workspace
    records = read_runs(Workspace(root).runs_file)
    if prometheus:
        click.echo(prometheus_text(records, config.name if config else root.name), nl=False)
        return
    stats = stage_stats(records)
    recent = records[-limit:]
    lines = [f"{len(records)} runs recorded in {root}"]
    for r in reversed(recent):
        stages = " ".join(f"{s['stage']}{'(cached)' if s.get('cache_hit') else ''}:{s['status']}" for s in r.get("stages", []))
        lines.append(f"  {r['run_id']}  {r['status']:<6} {r['duration_s']:>8.2f}s  {stages}")
    if stats:
        lines.append("stage       runs  fail%  cache%   p50 s   p95 s")
        for name, s in stats.items():
            lines.append(
                f"  {name:<9} {s['count']:>4} {s['failure_rate']:>6.0%} {s['cache_hit_rate']:>6.0%} {s['p50_s']:>7.3f} {s['p95_s']:>7.3f}"
            )
    _emit(as_json, {"runs": recent, "stats": stats, "total": len(records)}, "\n".join(lines))


@cli.command()
@click.argument("artifact")
@click.option(
    "--registry",
    default=None,
    help="Registry URL: ARTIFACT is then a tag, a digest or a unique digest prefix in it (with --repository).",
)
@click.option("--repository", default=None, help="Repository name in --registry.")
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1, or MLCI_SERVE_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default 8080, or MLCI_SERVE_PORT).")
@click.option(
    "--log-dir",
    type=_dir_out,
    default=None,
    help="Prediction log directory (default $XDG_STATE_HOME/mlci/<model>/predictions, else "
    "~/.local/state/mlci/<model>/predictions; or MLCI_SERVE_LOG_DIR). The ready line names it.",
)
@click.option("--no-log", is_flag=True, help="Do not write the prediction log.")
@click.option(
    "--log-max-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Rotate the prediction log when a segment (its .jsonl and its blob file) reaches this size (default 64 MiB, or MLCI_SERVE_LOG_MAX_BYTES).",
)
@click.option(
    "--log-keep",
    type=click.IntRange(min=0),
    default=None,
    help="Rotated log segments to keep, oldest dropped first (their blob files are recycled); 0 keeps all (default, or MLCI_SERVE_LOG_KEEP).",
)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None, help="Larger bodies get 413 (default 8 MiB).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads (default 1).")
@click.option(
    "--batch-max-rows",
    type=click.IntRange(min=0),
    default=None,
    help="Rows concurrent requests may share in one onnxruntime call (default 256; 0 turns batching off).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    default=None,
    help="Seconds a request's headers may take, from the connection opening or the request's first byte; "
    "then the connection is closed (default 10, or MLCI_SERVE_HEADER_TIMEOUT_S).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    default=None,
    help="Seconds a request's whole body may take after its headers; then 408 and the connection is "
    "closed (default 30, or MLCI_SERVE_BODY_TIMEOUT_S).",
)
@click.option(
    "--keep-alive-timeout",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    default=None,
    help="Seconds an idle keep-alive connection stays open (default 5, or MLCI_SERVE_KEEP_ALIVE_TIMEOUT_S).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Open connections served at once; a request on a connection beyond them gets 503 and the "
    "connection is closed (default 1024, or MLCI_SERVE_MAX_CONNECTIONS).",
)
@click.option(
    "--max-buffered-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Request-body bytes the server holds while bodies arrive, all connections together; a body that "
    "would pass it gets 503, retry later (default 128 MiB, or MLCI_SERVE_MAX_BUFFERED_BYTES; at least "
    "--max-body-bytes).",
)
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default=None)
def serve(
    artifact: str,
    registry: str | None,
    repository: str | None,
    host: str | None,
    port: int | None,
    log_dir: Path | None,
    no_log: bool,
    log_max_bytes: int | None,
    log_keep: int | None,
    max_body_bytes: int | None,
    threads: int | None,
    batch_max_rows: int | None,
    header_timeout: float | None,
    body_timeout: float | None,
    keep_alive_timeout: float | None,
    max_connections: int | None,
    max_buffered_bytes: int | None,
    log_level: str | None,
) -> None:
    """Serve ARTIFACT over the Open Inference Protocol (KServe V2 REST) until SIGTERM.

    ARTIFACT is an artifact directory, or with --registry/--repository a tag or digest (or a unique digest
    prefix, at least 7 hex digits) that is pulled (every blob verified) into the local cache
    ($MLCI_CACHE_DIR, default ~/.cache/mlci/artifacts) first.

    The artifact's hashes and digest are verified first; a tampered artifact is refused (exit 2).
    Once the model is loaded and warmed up, one line on stderr says what serves where:
    `mlci serve: serving <model> <digest> at http://HOST:PORT (prediction log: <dir> | off)`.
    Every other setting can also come from MLCI_SERVE_* environment variables.
    """
    import dataclasses
    import os

    from mlci.serving.server import serve as run_server
    from mlci.serving.settings import Settings

    overrides: dict[str, Any] = {"artifact": _serve_source(artifact, registry, repository)}
    for key, value in (
        ("host", host), ("port", port), ("log_dir", log_dir), ("max_body_bytes", max_body_bytes),
        ("threads", threads), ("log_level", log_level), ("log_max_bytes", log_max_bytes), ("log_keep", log_keep),
        ("batch_max_rows", batch_max_rows), ("header_timeout_s", header_timeout), ("body_timeout_s", body_timeout),
        ("keep_alive_timeout_s", keep_alive_timeout), ("max_connections", max_connections),
        ("max_buffered_bytes", max_buffered_bytes),
    ):  # fmt: skip
        if value is not None:
            overrides[key] = value
    if no_log:
        overrides["log_dir"] = None
    run_server(dataclasses.replace(Settings.from_env(os.environ), **overrides))


def _serve_source(artifact: str, registry: str | None, repository: str | None) -> Path:
    """The directory to serve: ARTIFACT itself, or ARTIFACT pulled from --registry/--repository."""
    if registry is None and repository is None:
        path = Path(artifact)
        if not path.is_dir():
            raise click.BadParameter(
                f"'{artifact}' is not a directory. Pass an artifact directory, or a tag/digest with "
                "--registry URL --repository NAME.",
                param_hint="ARTIFACT",
            )
        return path
    if registry is None or repository is None:
        raise click.UsageError("--registry and --repository go together; give both or neither.")
    import os

    from mlci.registry import default_cache_dir, fetch, open_store, registry_settings_from_env

    username, password = registry_settings_from_env(os.environ)
    store = open_store(registry, repository, username=username, password=password)
    return fetch(store, artifact, default_cache_dir())


# Command groups that live beside their code; each module imports only click at the top level.
from mlci.monitor.cli import register as _register_monitor  # noqa: E402
from mlci.release.commands import register as _register_release  # noqa: E402
from mlci.scaffold import register as _register_scaffold  # noqa: E402

_register_release(cli, config_option=config_option, json_option=json_option, emit=_emit, load=_load)
_register_scaffold(cli)
_register_monitor(cli)


# True when this process is the `mlci` program (main), not a caller of `cli` in its own process (click's
# CliRunner, a library): only the program may restart itself (numerics.restart_command).
_PROGRAM = False


def main() -> None:
    """Console entry point."""
    global _PROGRAM
    _PROGRAM = True
    cli()
