"""`mlci monitor`: the thin shell around :class:`mlci.monitor.service.Monitor`.

Only click and the standard library are imported at module level (`mlci --help` stays fast); the
monitor, numpy, scipy and onnxruntime load inside the command. Exit 0 ok; 1 with ``--fail-on-drift``
when drift, decay or outliers were detected or an alert could not be delivered; 2 bad input. A cycle
that fails does not end a run: every cycle asked for is tried, and the exit code is the failure's (2 for
bad input, else 1). Delivery failures and quarantined labels lines are printed on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["register"]


def _rollback_action(config_path: Path, deploy: bool) -> Any:
    """A rollback of production through the configured registry (and a redeploy unless ``deploy`` is False)."""

    def action(context: dict[str, Any]) -> dict[str, Any]:
        from mlci.config import load_config
        from mlci.errors import CheckFailed
        from mlci.pipeline import open_registry
        from mlci.registry import tag_digest
        from mlci.release.promote import Release, rollback

        config = load_config(config_path)
        store = open_registry(config)
        serving = tag_digest(store, "production")
        if serving != context["digest"]:
            # Rolling back moves production off whatever it serves now: only do it if that is the model judged bad.
            raise CheckFailed(
                f"production serves {str(serving)[:19]}, not the monitored {context['digest'][:19]}; not rolling back. "
                "Monitor the artifact production serves (or roll back by hand: `mlci rollback production`)."
            )
        release = Release.from_env()
        entry = rollback(store, "production", release=release, reason=f"mlci monitor: {context['condition']} ({context['reason']})")
        result: dict[str, Any] = {"rollback": entry}
        if deploy:
            from mlci.release.flow import deploy_environment

            result["deployed"] = deploy_environment(config, store, "production", release)
        return result

    return action


def _delivery_lines(report: dict[str, Any]) -> list[str]:
    """Loud lines for the alerts not delivered in this cycle: the receiver's status, reason and what next."""
    lines = []
    for f in report["alerts"].get("failures", []):
        if f["status"] == "dead":
            then = "dead: not retried (see the outbox file)"
        elif f["kind"] in ("unreachable", "timeout"):
            then = "kept, retried next cycle"
        else:
            then = f"kept, retried at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f['retry_at']))}"
            if f["kind"] == "rejected":
                then += " (the receiver refuses the body or the URL: fix it and the alert goes out)"
        lines.append(f"  alert {f['id']} not delivered: {f['error']}; {then}")
    return lines


def _echo_report(r: dict[str, Any]) -> None:
    """One cycle's report as text: the verdict on stdout, what needs a person's attention on stderr."""
    click.echo(f"cycle {r['cycle']}: {r['status']} ({r['rows']} rows) — {r['message']}")
    for a in r["actions"]:
        click.echo(f"  action {a['action']} for {a['condition']}: {'held back, ' if a['suppressed'] else ''}{a['reason']}")
    _echo_warnings(r, waiting=True)


def _echo_warnings(r: dict[str, Any], *, waiting: bool = False) -> None:
    """Delivery failures and quarantined labels lines (and, with ``waiting``, alerts waiting) on stderr."""
    for line in _delivery_lines(r):
        click.echo(line, err=True)
    performance = r.get("performance") or {}
    if performance.get("quarantined"):
        click.echo(
            f"  {performance['quarantined']} bad labels line(s) quarantined in labels-quarantine.jsonl "
            f"(first: {performance['quarantined_first']})",
            err=True,
        )
    pending = r["alerts"]["pending"]
    if waiting and pending:
        click.echo(f"  {len(pending)} alert(s) waiting in the outbox", err=True)


def _exit_code(reports: list[dict[str, Any]], fail_on_drift: bool) -> int:
    """2/1 when a cycle failed (its error's code), 1 with --fail-on-drift on a finding or a failed delivery."""
    failed = [int(r["exit_code"]) for r in reports if r["status"] == "error"]
    if failed:
        return max(failed)
    undelivered = any(r["alerts"].get("failures") for r in reports)
    if fail_on_drift and (undelivered or any(r["status"] in ("drift", "decay", "outliers") for r in reports)):
        return 1
    return 0


def register(group: click.Group) -> None:
    """Add `mlci monitor` to ``group``."""

    @group.command()
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--log-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                  help="The server's prediction log directory (mlci serve --log-dir).")
    @click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help='Delayed labels: JSON Lines {"id": request id, "labels": [...]} or CSV id,label[,row].')
    @click.option("--webhook", default=None, help="POST alerts here (default: MLCI_MONITOR_WEBHOOK; none: outbox only).")
    @click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="State, outbox and reports (default: <log-dir>/../monitor-state).")
    @click.option("--window", type=click.IntRange(min=1), default=None, help="Rows per window (default 5000, MLCI_MONITOR_WINDOW).")
    @click.option("--min-rows", type=click.IntRange(min=1), default=None, help="No verdict below this many rows (default 100).")
    @click.option("--once", is_flag=True, help="Run one cycle and exit (the default when --cycles is not given).")
    @click.option("--interval", type=click.FloatRange(min=0), default=None, help="Seconds between cycles (default 60).")
    @click.option("--cycles", type=click.IntRange(min=0), default=None, help="Number of cycles; 0 = run until stopped.")
    @click.option("--rollback-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="mlci.toml whose registry holds the production tag: enables the rollback action.")
    @click.option("--no-deploy", is_flag=True, help="On rollback, move the production tag only (no redeploy).")
    @click.option("--fail-on-drift", is_flag=True,
                  help="Exit 1 when drift, outliers or decay was detected or an alert could not be delivered.")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="Print the report(s) as JSON on stdout.")
    def monitor(
        artifact: Path, log_dir: Path, labels: Path | None, webhook: str | None, state_dir: Path | None,
        window: int | None, min_rows: int | None, once: bool, interval: float | None, cycles: int | None,
        rollback_config: Path | None, no_deploy: bool, fail_on_drift: bool, as_json: bool,
    ) -> None:
        """Watch ARTIFACT in production through its prediction log: drift, outliers, decay, alerts, actions."""
        import dataclasses

        from mlci.monitor.service import Monitor
        from mlci.monitor.settings import Settings

        if once and cycles is not None:
            raise click.UsageError("--once and --cycles exclude each other; use one.")
        # MonitorError (and the artifact's DataError) are MlciErrors: the main group maps them to exit 2.
        settings = Settings.from_env(os.environ)
        overrides = {k: v for k, v in (("window", window), ("min_rows", min_rows), ("webhook", webhook),
                                       ("interval_s", interval)) if v is not None}  # fmt: skip
        settings = dataclasses.replace(settings, **overrides)
        actions = {"rollback": _rollback_action(rollback_config, not no_deploy)} if rollback_config else {}
        service = Monitor(artifact, log_dir, state_dir or log_dir.parent / "monitor-state", settings=settings,
                          labels=labels, actions=actions, log=lambda line: click.echo(line, err=True))  # fmt: skip
        # each cycle says what needs attention as it happens (a daemon's cycles never return)
        reports = service.run(settings.interval_s, 1 if cycles is None else (cycles or None),
                              on_report=_echo_warnings if as_json else _echo_report)  # fmt: skip
        if as_json:
            click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, sort_keys=True, default=str))
        failed = sum(r["status"] == "error" for r in reports)
        if failed:
            where = "see above and errors.json in the state directory"
            click.echo(f"Error: {failed} of {len(reports)} cycle(s) failed ({where}).", err=True)
        sys.exit(_exit_code(reports, fail_on_drift))
