"""The release commands of the CLI: smoke, gate, push, pull, promote, deploy, rollback, hotfix, status, stop.

Registered on the main group by :func:`register`; like the rest of the CLI, they import heavy libraries
only inside the command bodies.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlci.errors import MlciError

__all__ = ["register"]

_ENV = click.Choice(["staging", "production"])


def register(
    group: click.Group,
    *,
    config_option: Callable[[Any], Any],
    json_option: Callable[[Any], Any],
    emit: Callable[[bool, dict[str, Any], str], None],
    load: Callable[[Path, Path | None], Any],
) -> None:
    """Add the release commands to ``group`` (helpers passed in to avoid an import cycle with mlci.cli)."""

    def store_of(config: Any) -> Any:
        from mlci.pipeline import open_registry

        return open_registry(config)

    def explicit_store(registry: str | None, repository: str | None) -> Any:
        """The store named by --registry/--repository, or None to use mlci.toml's [registry]."""
        if (registry is None) != (repository is None):
            raise click.UsageError("--registry and --repository go together; give both or neither.")
        if registry is None or repository is None:
            return None
        import os

        from mlci.registry import open_store, registry_settings_from_env

        username, password = registry_settings_from_env(os.environ)
        return open_store(registry, repository, username=username, password=password)

    def note_of(deployed: dict[str, Any] | None) -> str:
        """The deploy's note on a stale or damaged state file it replaced, as a line of its own."""
        return f"\nnote: {deployed['note']}" if deployed and deployed.get("note") else ""

    def release_of() -> Any:
        from mlci.release.promote import Release

        return Release.from_env()

    def report_path(config: Any, artifact: Path, name: str) -> Path:
        """Where smoke.json / verdict.json of ARTIFACT live in the workspace (what `mlci run` writes too)."""
        from mlci.model.artifact import read_manifest
        from mlci.workspace import Workspace

        return Workspace(config.workspace).reports_dir(read_manifest(artifact)["digest"]) / name

    def write_report(report: dict[str, Any], path: Path) -> None:
        """Write smoke.json / verdict.json as `mlci run` does (pipeline._keep_report): canonical JSON."""
        from mlci.canonical import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, report)

    @group.command()
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @config_option
    @click.option("--url", default=None, help="Smoke-test this live endpoint instead of starting a server.")
    @click.option(
        "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Write smoke.json here (default: the workspace's .mlci/reports/sha256-<hex>/smoke.json, "
        "where `mlci gate` finds it).",
    )  # fmt: skip
    @json_option
    def smoke(artifact: Path, config_path: Path, workspace: Path | None, url: str | None, out: Path | None, as_json: bool) -> None:
        """Serve ARTIFACT with the real server, send holdout rows, compare with in-process output. Exit 1 on failure."""
        from mlci.release.smoke import run_smoke
        from mlci.stages import holdout_rows

        config = load(config_path, workspace)
        kept = out or report_path(config, artifact, "smoke.json")
        report = run_smoke(
            artifact, holdout_rows(config, config.smoke.rows), max_p99_ms=config.smoke.max_p99_ms,
            timeout_s=config.smoke.timeout_s, url=url,
        ).to_json()
        write_report(report, kept)
        text = f"smoke {'passed' if report['passed'] else 'FAILED'}: {report['reason']}\nreport → {kept}"
        emit(as_json, {**report, "report": str(kept)}, text)
        if not report["passed"]:
            sys.exit(1)

    def smoke_report(artifact: Path, path: Path, *, explicit: bool) -> dict[str, Any] | None:
        """ARTIFACT's smoke report: None if the workspace has none; refused if it judges another artifact."""
        from mlci.model.artifact import read_manifest

        if not explicit and not path.is_file():
            return None
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MlciError(f"Cannot read the smoke report '{path}' ({exc}); re-run `mlci smoke`.") from exc
        digest = read_manifest(artifact)["digest"]
        judged = report.get("digest") if isinstance(report, dict) else None
        if judged != digest:
            raise MlciError(
                f"The smoke report '{path}' is for {judged}, not for {digest} in '{artifact}'. "
                f"Run `mlci smoke {artifact}` to test this artifact, then gate it."
            )
        return report

    @group.command()
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @config_option
    @click.option(
        "--production", default="registry", show_default=True,
        help="Production model to compare with: 'registry' (the production tag, if any), 'none', or an artifact directory.",
    )
    @click.option(
        "--smoke", "smoke_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
        help="smoke.json from `mlci smoke` (default: the one `mlci smoke` or `mlci run` wrote for ARTIFACT "
        "in the workspace).",
    )
    @click.option(
        "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Write verdict.json here (default: the workspace's .mlci/reports/sha256-<hex>/verdict.json, "
        "beside the smoke report).",
    )  # fmt: skip
    @click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
    def gate(artifact: Path, config_path: Path, workspace: Path | None, production: str, smoke_file: Path | None, out: Path | None, fmt: str) -> None:
        """Judge ARTIFACT against the policy, a trivial baseline and production on rows neither trained on. Exit 0 pass, 1 fail."""
        from mlci.model.gate import run_gate, verdict_markdown

        config = load(config_path, workspace)
        prod_dir: Path | None = None
        if production == "registry":
            from mlci.registry import pull_artifact, tag_digest

            store = store_of(config)
            digest = tag_digest(store, "production")
            if digest is not None:
                prod_dir = config.workspace / "production" / digest.replace(":", "-")
                pull_artifact(store, digest, prod_dir)
        elif production != "none":
            prod_dir = Path(production)
            if not prod_dir.is_dir():
                raise click.BadParameter(f"'{production}' is not a directory, 'registry' or 'none'.", param_hint="--production")
        smoke_path = smoke_file or report_path(config, artifact, "smoke.json")
        smoke = smoke_report(artifact, smoke_path, explicit=smoke_file is not None)
        verdict = run_gate(config, artifact, prod_dir, smoke).to_json()
        kept = out or report_path(config, artifact, "verdict.json")
        write_report(verdict, kept)
        if fmt == "json":
            click.echo(json.dumps(verdict, indent=2, sort_keys=True))
        elif fmt == "markdown":
            click.echo(verdict_markdown(verdict))
        else:
            for c in verdict["checks"]:
                click.echo(f"  {'✓' if c['passed'] else '✗'} {c['name']}: {c['reason']}")
            scope = (" (first release: no production model)" if verdict["first_run"] else
                     f" (vs production on {verdict['compared_rows']} rows neither model trained on)" if verdict["compared_rows"] is not None else "")
            click.echo(f"gate {'passed' if verdict['passed'] else 'FAILED'}" + scope)
            click.echo(f"verdict → {kept} (store it with `mlci push ARTIFACT --verdict {kept}`)")
        if not verdict["passed"]:
            sys.exit(1)

    @group.command()
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @config_option
    @click.option("--tag", "tags", multiple=True, default=("candidate",), show_default=True, help="Tags to move to the artifact.")
    @click.option("--verdict", "verdict_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="verdict.json to store beside it.")
    @click.option("--registry", default=None, help="Registry URL (instead of [registry] url; no mlci.toml needed with --repository).")
    @click.option("--repository", default=None, help="Repository name (instead of [registry] repository).")
    @json_option
    def push(
        artifact: Path, config_path: Path, workspace: Path | None, tags: tuple[str, ...], verdict_file: Path | None,
        registry: str | None, repository: str | None, as_json: bool,
    ) -> None:
        """Push ARTIFACT to the registry as an OCI artifact (blobs first, tags last)."""
        from mlci.registry import push_artifact
        from mlci.release.promote import push_judged

        verdict = json.loads(verdict_file.read_text()) if verdict_file is not None else None
        store = explicit_store(registry, repository) or store_of(load(config_path, workspace))
        if verdict is not None:  # a rejected candidate is stored by digest with its verdict, never as candidate
            pushed = push_judged(store, artifact, verdict, tags, reuse=False)
        else:
            result = push_artifact(store, artifact, tags=tags)
            pushed = {
                "artifact_digest": result.artifact_digest, "manifest_digest": result.manifest_digest,
                "tags": list(result.tags),
            }  # fmt: skip
        rejected = " (rejected by the gate: not tagged candidate)" if pushed.get("rejected") else ""
        text = f"pushed {pushed['artifact_digest']} → {store} (tags: {', '.join(pushed['tags'])}){rejected}"
        emit(as_json, {**pushed, "registry": str(store)}, text)

    @group.command()
    @click.argument("ref")
    @config_option
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write the artifact into.")
    @click.option("--registry", default=None, help="Registry URL (instead of [registry] url; no mlci.toml needed with --repository).")
    @click.option("--repository", default=None, help="Repository name (instead of [registry] repository).")
    @json_option
    def pull(ref: str, config_path: Path, workspace: Path | None, out: Path, registry: str | None, repository: str | None, as_json: bool) -> None:
        """Pull REF (a tag, an artifact digest or a unique prefix of one, or a manifest digest), verifying every blob."""
        from mlci.registry import pull_artifact

        store = explicit_store(registry, repository) or store_of(load(config_path, workspace))
        manifest = pull_artifact(store, ref, out)
        emit(as_json, {"digest": manifest["digest"], "out": str(out)}, f"pulled {manifest['digest']} → {out}")

    @group.command()
    @click.argument("env", type=_ENV)
    @config_option
    @click.option(
        "--digest",
        default=None,
        help="Artifact to promote: its digest or a unique prefix (sha256:<hex> or bare hex, at least 7 digits) "
        "(default: candidate for staging, staging for production).",
    )
    @click.option("--approve", is_flag=True, help="A human approves this promotion (needed unless continuous deployment is on).")
    @click.option("--reason", default="", help="Why, for the history.")
    @click.option("--deploy/--no-deploy", "then_deploy", default=True, show_default=True, help="Deploy right after promoting.")
    @json_option
    def promote(env: str, config_path: Path, workspace: Path | None, digest: str | None, approve: bool, reason: str, then_deploy: bool, as_json: bool) -> None:
        """Point ENV at an artifact with a passing verdict, then deploy it (with post-deploy check and auto-rollback)."""
        from mlci.registry import tag_digest
        from mlci.release.flow import deploy_environment, describe_deployment
        from mlci.release.promote import promote as do_promote

        config = load(config_path, workspace)
        store = store_of(config)
        source = "candidate" if env == "staging" else "staging"
        digest = digest or tag_digest(store, source)
        if digest is None:
            raise MlciError(f"Nothing to promote to {env}: the {source} tag is empty. Pass --digest or run the pipeline first.")
        release = release_of()
        entry = do_promote(store, env, digest, release=release, approve=approve, continuous=config.deploy.continuous_deployment, reason=reason)
        deployed = deploy_environment(config, store, env, release) if then_deploy else None
        emit(
            as_json, {"promotion": entry, "deployed": deployed},
            f"{env} → {entry['to']}" + (f"\n{describe_deployment(env, deployed)}" if deployed else "") + note_of(deployed),
        )  # fmt: skip

    @group.command()
    @click.argument("env", type=_ENV)
    @config_option
    @json_option
    def deploy(env: str, config_path: Path, workspace: Path | None, as_json: bool) -> None:
        """(Re)deploy what ENV's tag points at; roll back automatically if the post-deploy check fails."""
        from mlci.release.flow import deploy_environment, describe_deployment

        config = load(config_path, workspace)
        result = deploy_environment(config, store_of(config), env, release_of())
        emit(as_json, result, describe_deployment(env, result) + note_of(result))

    @group.command()
    @click.argument("env", type=_ENV)
    @config_option
    @click.option("--reason", default="", help="Why, for the history.")
    @click.option("--deploy/--no-deploy", "then_deploy", default=True, show_default=True, help="Redeploy after moving the tag.")
    @json_option
    def rollback(env: str, config_path: Path, workspace: Path | None, reason: str, then_deploy: bool, as_json: bool) -> None:
        """Move ENV back to the version it served before, and redeploy it."""
        from mlci.release.flow import deploy_environment, describe_deployment
        from mlci.release.promote import rollback as do_rollback

        config = load(config_path, workspace)
        store = store_of(config)
        release = release_of()
        entry = do_rollback(store, env, release=release, reason=reason)
        deployed = deploy_environment(config, store, env, release) if then_deploy else None
        text = f"{env} rolled back {str(entry['from'])[:19]} → {entry['to']}"
        text += f"\n{describe_deployment(env, deployed)}" if deployed else f" (tag only: run `mlci deploy {env}` to serve it)"
        emit(as_json, {"rollback": entry, "deployed": deployed}, text)

    @group.command()
    @click.argument("env", type=_ENV)
    @config_option
    @click.option("--reason", default="", help="Why, for the history.")
    @json_option
    def hotfix(env: str, config_path: Path, workspace: Path | None, reason: str, as_json: bool) -> None:
        """Serving code changed only: smoke ENV's artifact with the new code, redeploy it, record it."""
        from mlci.release.flow import hotfix as do_hotfix

        config = load(config_path, workspace)
        result = do_hotfix(config, store_of(config), env, release_of(), reason)
        emit(as_json, result, f"hotfix of {env}: {result['digest']} redeployed with the current serving code")

    @group.command()
    @config_option
    @click.option("--limit", type=click.IntRange(min=1), default=5, show_default=True, help="History entries shown per environment.")
    @json_option
    def status(config_path: Path, workspace: Path | None, limit: int, as_json: bool) -> None:
        """What each environment serves (registry tags and local servers) and the history of its moves."""
        from mlci.release.deploy import local_state
        from mlci.release.promote import status as registry_status

        config = load(config_path, workspace)
        report = registry_status(store_of(config))
        lines = [f"candidate   {report['candidate']['digest'] or '-'}"]
        for env in ("staging", "production"):
            info = report[env]
            info["local_server"], info["local_server_problem"] = local_state(config, env)
            lines.append(environment_line(config, env, info))
            if info["local_server_problem"]:
                lines.append(f"    local server: {info['local_server_problem']}; `mlci stop {env}` clears the record")
            for e in info["history"][-limit:]:
                origin = (e["from"] or "(first)")[:19]
                lines.append(f"    {e['at']}  {e['action']:<8} {origin:<19} → {e['to'][:19]}  by {e['by']}: {e['why']}")
        emit(as_json, report, "\n".join(lines))

    def environment_line(config: Any, env: str, info: dict[str, Any]) -> str:
        """Ask the environment's live server what it serves, record it in ``info``, and say it in one line.

        ``consistent`` holds only when the tag agrees with the history (``history_consistent``) and a running
        server serves what the tag names (``served_digest``, from its model metadata).
        """
        from mlci.release.deploy import served_version

        server, tagged = info["local_server"], info["digest"]
        served, answer = served_version(server["url"], config.name) if server else (None, "")
        info["history_consistent"] = info["consistent"]
        info["served_digest"] = served
        info["consistent"] = info["history_consistent"] and (server is None or served == tagged)
        warn = "" if info["history_consistent"] else "  (tag moved outside mlci or history write interrupted)"
        if server is None:
            return f"{env:<11} {tagged or '-'}{warn}"
        if served == tagged:
            return f"{env:<11} {tagged}  serving at {server['url']}{warn}"
        what = f"serves {served}" if served else f"answers {answer}"
        return (
            f"{env:<11} tag {tagged or '-'}; the server at {server['url']} {what}, not what the tag names "
            f"(`mlci deploy {env}` serves the tag){warn}"
        )

    @group.command()
    @click.argument("env", type=_ENV)
    @config_option
    def stop(env: str, config_path: Path, workspace: Path | None) -> None:
        """Stop ENV's local server (graceful: drains requests and flushes the prediction log)."""
        from mlci.release.deploy import stop as stop_server

        click.echo(f"{env}: {stop_server(load(config_path, workspace), env)}")  # exit 0, also when already stopped
