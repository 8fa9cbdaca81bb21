"""Release flows composed from the pieces: deploy an environment to its target, and the hotfix path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import CheckFailed, MlciError
from mlci.release.promote import ENVIRONMENTS, Release, history, record_move

__all__ = ["deploy_environment", "describe_deployment", "hotfix", "live_checker"]


def live_checker(config: Config) -> Any:
    """The post-deploy check: a smoke test of the live endpoint on holdout rows."""
    from mlci.release.smoke import run_smoke
    from mlci.stages import holdout_rows

    rows = holdout_rows(config, config.smoke.rows)

    def check(artifact: Path, url: str) -> Any:
        return run_smoke(artifact, rows, max_p99_ms=config.smoke.max_p99_ms, timeout_s=config.deploy.check_timeout_s, url=url)

    return check


def deploy_environment(config: Config, store: Any, env: str, release: Release) -> dict[str, Any]:
    """Deploy ``env``'s tagged artifact to the configured target; returns what now serves it."""
    from mlci.registry import tag_digest

    if env not in ENVIRONMENTS:
        raise MlciError(f"Unknown environment {env!r}; expected one of {', '.join(ENVIRONMENTS)}.")
    if config.deploy.target == "kubernetes":
        from mlci.release.deploy import apply_kubernetes, render_kubernetes

        digest = tag_digest(store, env)
        if digest is None:
            raise MlciError(f"{env} has no artifact yet; promote one first (`mlci promote {env} --approve`).")
        manifest = render_kubernetes(config, env, digest)
        path = config.workspace / "deploy" / env / "kubernetes.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest)
        applied = apply_kubernetes(manifest, config, env)
        return {
            "target": "kubernetes", "digest": digest, "manifest": str(path), "applied": applied.context is not None,
            "applied_to": applied.context, "not_applied": applied.not_applied, "rollout": applied.rollout,
        }  # fmt: skip
    from mlci.release.deploy import deploy

    result = deploy(config, store, env, release=release, checker=live_checker(config))
    return {"target": "local", "digest": result.digest, "url": result.url, "pid": result.pid, "note": result.note}


def describe_deployment(env: str, deployed: dict[str, Any]) -> str:
    """One truthful line on what a deploy did: serving where, applied to which cluster, or only rendered."""
    if deployed.get("target") != "kubernetes":
        return f"{env} serves {deployed['digest']} ({deployed.get('url')})"
    if deployed.get("applied"):
        return (
            f"{env}: {deployed['digest']} applied to {deployed['applied_to']} and rolled out "
            f"({deployed['manifest']})"
        )
    return (
        f"{env}: rendered {deployed['manifest']} for {deployed['digest']}; NOT applied ({deployed['not_applied']}). "
        f"Apply it with `kubectl apply -f {deployed['manifest']}`."
    )


def hotfix(config: Config, store: Any, env: str, release: Release, reason: str = "") -> dict[str, Any]:
    """Serving code changed, the model did not: re-use ``env``'s artifact, smoke it, redeploy, record it.

    No retraining and no new gate: the artifact already passed its gate; what is new is the code that
    serves it, and that is exactly what the smoke test and the post-deploy check exercise.
    """
    from mlci.registry import pull_artifact, tag_digest
    from mlci.release.smoke import run_smoke
    from mlci.stages import holdout_rows

    digest = tag_digest(store, env)
    if digest is None:
        raise MlciError(f"{env} serves nothing yet; a hotfix re-uses the artifact an environment already serves.")
    artifact = config.workspace / "deploy" / env / "artifacts" / digest.replace(":", "-")
    pull_artifact(store, digest, artifact)
    report = run_smoke(artifact, holdout_rows(config, config.smoke.rows), max_p99_ms=config.smoke.max_p99_ms, timeout_s=config.smoke.timeout_s)
    if not report.passed:
        raise CheckFailed(f"Hotfix refused: the smoke test of {digest[:19]} with the new serving code failed: {report.reason}")
    deployed = deploy_environment(config, store, env, release)
    entry = {
        "action": "hotfix", "from": digest, "to": digest, "by": release.actor, "at": release.clock(),
        "why": reason or "serving code change; same artifact", "approved": True,
    }
    record_move(store, env, entry)
    return {"digest": digest, "smoke_p99_ms": report.p99_ms, "deployed": deployed, "history_entries": len(history(store, env))}
