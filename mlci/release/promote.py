"""Environments are registry tags; every move goes through here, and here only a passing verdict moves one.

The registry holds the truth and survives the machine: the environment tags (`staging`, `production`),
one verdict document per artifact (`verdict-sha256-<hex>`) and one history document per environment
(`history-<env>`, who/when/from/to/why of every move). The tag moves first and the history entry is
written second: if a process dies in between, the tag still points at a complete artifact and
`status` reports the move as untracked instead of the history claiming a move that did not happen.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlci.errors import CheckFailed, MlciError

__all__ = [
    "ENVIRONMENTS",
    "PromotionRefused",
    "Release",
    "current_actor",
    "history",
    "promote",
    "record_move",
    "rollback",
    "status",
    "store_verdict",
    "verdict_for",
    "verdict_tag",
]

ENVIRONMENTS = ("staging", "production")


class PromotionRefused(CheckFailed):
    """An artifact may not (yet) get this environment tag."""


def verdict_tag(digest: str) -> str:
    """Registry tag of the gate verdict for artifact ``digest``."""
    return "verdict-" + digest.replace(":", "-")


def _history_tag(env: str) -> str:
    return f"history-{env}"


def current_actor(environ: Mapping[str, str]) -> str:
    """Who is acting: the CI vendor's user when there is one, else the local login."""
    for key in ("MLCI_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "USER"):
        if environ.get(key):
            return environ[key]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Release:
    """Who acts and when; injectable so tests (and replays) control both."""

    actor: str
    clock: Callable[[], str] = _now

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Release:
        """The actor from CI/user environment variables."""
        return cls(current_actor(os.environ if environ is None else environ))


def _check_env(env: str) -> None:
    if env not in ENVIRONMENTS:
        raise MlciError(f"Unknown environment {env!r}; expected one of {', '.join(ENVIRONMENTS)}.")


def store_verdict(store: Any, verdict: Mapping[str, Any]) -> None:
    """Keep the gate's verdict next to the artifact in the registry."""
    from mlci.registry import put_document

    put_document(store, verdict_tag(verdict["candidate"]), dict(verdict), "verdict")


def verdict_for(store: Any, digest: str) -> dict[str, Any] | None:
    """The stored verdict of ``digest``, or None."""
    from mlci.registry import get_document

    return get_document(store, verdict_tag(digest))


def history(store: Any, env: str) -> list[dict[str, Any]]:
    """Every recorded move of ``env``, oldest first."""
    from mlci.registry import get_document

    doc = get_document(store, _history_tag(env))
    return list(doc["entries"]) if doc else []


def record_move(store: Any, env: str, entry: dict[str, Any]) -> None:
    """Append one entry to the environment's history document in the registry."""
    from mlci.registry import put_document

    entries = [*history(store, env), entry]
    put_document(store, _history_tag(env), {"environment": env, "entries": entries}, "history")


def _require_passing(store: Any, digest: str) -> dict[str, Any]:
    verdict = verdict_for(store, digest)
    if verdict is None:
        raise PromotionRefused(
            f"{digest[:19]} has no gate verdict in the registry, so it cannot be promoted. "
            "Run `mlci gate` on it and push the verdict (`mlci push --verdict verdict.json`)."
        )
    if verdict.get("candidate") != digest or not verdict.get("passed"):
        failed = [c["name"] for c in verdict.get("checks", []) if not c.get("passed")]
        raise PromotionRefused(
            f"{digest[:19]} failed the gate ({', '.join(failed) or 'verdict does not match the artifact'}); "
            "a candidate that fails the gate never gets a staging or production tag. Fix the model and re-run the pipeline."
        )
    return verdict


def promote(
    store: Any,
    env: str,
    digest: str,
    *,
    release: Release,
    approve: bool = False,
    continuous: bool = False,
    reason: str = "",
    action: str = "promote",
) -> dict[str, Any]:
    """Point ``env`` at ``digest``. Refused without a passing verdict, and without approval in manual mode."""
    from mlci.registry import resolve, tag_artifact, tag_digest

    _check_env(env)
    if resolve(store, digest) is None:
        raise PromotionRefused(f"{digest[:19]} is not in the registry; push it first (`mlci push`).")
    _require_passing(store, digest)
    if not (approve or continuous):
        raise PromotionRefused(
            f"Promoting {digest[:19]} to {env} needs a human's approval: re-run with --approve, "
            "or set [deploy] continuous_deployment = true to promote automatically after a passing gate."
        )
    previous = tag_digest(store, env)
    tag_artifact(store, env, digest)
    entry = {
        "action": action,
        "from": previous,
        "to": digest,
        "by": release.actor,
        "at": release.clock(),
        "why": reason or ("continuous deployment after a passing gate" if continuous and not approve else "approved"),
        "approved": approve,
    }
    record_move(store, env, entry)
    return entry


def rollback(store: Any, env: str, *, release: Release, reason: str = "") -> dict[str, Any]:
    """Move ``env`` back to the digest it served before the current one (it passed the gate then)."""
    from mlci.registry import tag_digest

    _check_env(env)
    current = tag_digest(store, env)
    if current is None:
        raise PromotionRefused(f"{env} has never been promoted; there is nothing to roll back.")
    entries = history(store, env)
    # A version that was rolled back from is not a rollback target: rolling back twice must not bounce
    # back to the version the first rollback escaped from.
    rejected = {e["from"] for e in entries if e["action"] == "rollback"} | {current}
    earlier = [e["to"] for e in entries if e["to"] not in rejected]
    if not earlier:
        raise PromotionRefused(f"{env} has served only {current[:19]}; there is no earlier version to roll back to.")
    return promote(
        store, env, earlier[-1], release=release, approve=True, reason=reason or f"rollback from {current[:19]}", action="rollback"
    )


def status(store: Any) -> dict[str, Any]:
    """What each environment serves, its history, and whether the tag agrees with the last recorded move."""
    from mlci.registry import tag_digest

    out: dict[str, Any] = {}
    for env in ENVIRONMENTS:
        entries = history(store, env)
        current = tag_digest(store, env)
        out[env] = {
            "digest": current,
            "history": entries,
            "consistent": (current is None and not entries) or (bool(entries) and entries[-1]["to"] == current),
        }
    out["candidate"] = {"digest": tag_digest(store, "candidate")}
    return out
