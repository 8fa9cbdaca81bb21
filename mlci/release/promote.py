"""Environments are registry tags; every move goes through here, and here only a passing verdict moves one.

The registry holds the truth and survives the machine: the environment tags (`staging`, `production`),
one verdict document per artifact (`verdict-sha256-<hex>`) and one history document per move
(`history-<env>-<UTC time to the nanosecond>Z-<random>`: who/when/from/to/why). A registry has no
compare-and-swap, so a history kept in one document loses the entry of one of two concurrent moves (both
read, both append, the later write wins); a document of its own per move is never rewritten, and the
history is every such document in the order of its tag. (The one document per environment that mlci
wrote before, `history-<env>`, is still read, as the oldest entries.)

The history is read, and checked, before a tag moves: a damaged history refuses the move with a clear
error. The tag moves first and the history entry is written second: if a process dies in between, the
tag still points at a complete artifact and `status` reports the move as untracked instead of the
history claiming a move that did not happen.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlci.errors import CheckFailed, MlciError, RegistryError

__all__ = [
    "ENVIRONMENTS",
    "PromotionRefused",
    "Release",
    "current_actor",
    "history",
    "promote",
    "push_judged",
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
    """The one history document per environment that mlci wrote before it wrote one per move."""
    return f"history-{env}"


def _move_tag(env: str) -> str:
    """A new, unique tag for one move's record; tags of one environment sort in the order they were made."""
    now = time.time_ns()
    stamp = datetime.fromtimestamp(now // 10**9, UTC).strftime("%Y%m%dT%H%M%S")
    return f"history-{env}-{stamp}.{now % 10**9:09d}Z-{secrets.token_hex(4)}"


def _is_move_tag(env: str, tag: str) -> bool:
    return re.fullmatch(rf"history-{re.escape(env)}-\d{{8}}T\d{{6}}\.\d{{9}}Z-[0-9a-f]{{8}}", tag) is not None


# What every history entry holds, and of which JSON types.
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "action": (str,), "from": (str, type(None)), "to": (str,), "by": (str,), "at": (str,), "why": (str,),
}  # fmt: skip


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


def _already_pushed(store: Any, digest: str, tags: tuple[str, ...], verdict: Mapping[str, Any]) -> bool:
    """Whether every tag already names ``digest`` and the registry holds this very verdict for it."""
    from mlci.canonical import canonical_json
    from mlci.registry import digest_tag, tag_digest

    if any(tag_digest(store, tag) != digest for tag in (*tags, digest_tag(digest))):
        return False
    stored = verdict_for(store, digest)
    return stored is not None and canonical_json(stored) == canonical_json(dict(verdict))


def push_judged(
    store: Any,
    artifact: Path,
    verdict: Mapping[str, Any],
    tags: tuple[str, ...] = ("candidate",),
    *,
    reuse: bool = True,
) -> dict[str, Any]:
    """Push an artifact with its verdict; a rejected one is stored by digest only, never tagged `candidate`.

    A rejected candidate stays in the registry (its verdict is on record, `mlci pull` fetches it by
    digest) while the `candidate` tag stays where it was. With ``reuse``, nothing is written when the
    registry already holds it all (every tag on this artifact, the same verdict); ``written`` says which.
    """
    from mlci.model.artifact import read_manifest
    from mlci.registry import digest_tag, push_artifact, resolve

    digest = str(verdict.get("candidate"))
    held = read_manifest(artifact)["digest"]
    if held != digest:
        raise MlciError(
            f"The verdict judges {digest}, not {held} in '{artifact}'; nothing was pushed. "
            "Gate this artifact (`mlci gate`) and push it with that verdict."
        )
    rejected = not verdict.get("passed")
    wanted = tuple(t for t in tags if not (rejected and t == "candidate"))
    if reuse and _already_pushed(store, digest, wanted, verdict):
        manifest_digest, all_tags, written = resolve(store, digest), (*wanted, digest_tag(digest)), False
    else:
        result = push_artifact(store, artifact, tags=wanted)
        store_verdict(store, verdict)
        manifest_digest, all_tags, written = result.manifest_digest, result.tags, True
    named = f"as {', '.join(wanted)}" if wanted else "by digest only"
    how = "pushed" if written else "already in the registry"
    why = " (rejected by the gate: not tagged candidate)" if rejected else ""
    note = f"{how} {named}: {digest[:19]}{why}"
    return {
        "artifact_digest": digest, "manifest_digest": manifest_digest, "tags": list(dict.fromkeys(all_tags)),
        "rejected": rejected, "written": written, "note": note,
    }  # fmt: skip


def verdict_for(store: Any, digest: str) -> dict[str, Any] | None:
    """The stored verdict of ``digest``, or None."""
    return _document(store, verdict_tag(digest), "verdict")


def _document(store: Any, tag: str, what: str = "history") -> dict[str, Any] | None:
    """The document under ``tag``, or None; a damaged one is a RegistryError naming the tag.

    get_document parses what the registry holds: invalid JSON, nesting deeper than the parser's recursion
    limit, or a manifest of the wrong shape (a list where an object belongs) surface here as Python errors.
    """
    from mlci.registry import get_document

    try:
        return get_document(store, tag)
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as exc:
        raise _damaged(store, tag, f"it cannot be read ({type(exc).__name__}: {str(exc)[:120]})", what) from exc


def _damaged(store: Any, tag: str, why: str, what: str = "history") -> RegistryError:
    return RegistryError(
        f"The {what} document {tag!r} in {store!r} is damaged: {why}. Nothing was moved. Restore that tag "
        "from a backup of the registry, or delete it (what it records is then forgotten), and try again."
    )


def _checked_entry(store: Any, tag: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _damaged(store, tag, f"an entry is a JSON {type(entry).__name__}, not an object")
    for key, types in _ENTRY_FIELDS.items():
        if not isinstance(entry.get(key), types):
            raise _damaged(store, tag, f"an entry's {key!r} is {entry.get(key)!r:.80}")
    return dict(entry)


def history(store: Any, env: str) -> list[dict[str, Any]]:
    """Every recorded move of ``env``, oldest first (raises RegistryError on a damaged record)."""
    entries: list[dict[str, Any]] = []
    legacy = _document(store, _history_tag(env))
    if legacy is not None:
        if not isinstance(legacy.get("entries"), list):
            raise _damaged(store, _history_tag(env), "it has no 'entries' list")
        entries += [_checked_entry(store, _history_tag(env), e) for e in legacy["entries"]]
    for tag in sorted(t for t in store.tags() if _is_move_tag(env, t)):
        doc = _document(store, tag)
        if doc is not None:  # gone since the listing
            entries.append(_checked_entry(store, tag, doc.get("entry")))
    return entries


def record_move(store: Any, env: str, entry: dict[str, Any]) -> None:
    """Record one move of ``env`` in the registry: a new document of its own, so no other move's is lost."""
    from mlci.registry import put_document

    put_document(store, _move_tag(env), {"environment": env, "entry": entry}, "history")


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


def _artifact_digest(store: Any, ref: str) -> str:
    """The full artifact digest ``ref`` names: a digest, a unique prefix of one (``sha256:<12 hex>`` as mlci
    prints it, or bare hex), or a tag; raises when the registry holds no such artifact."""
    from mlci.registry import expand_ref, resolve, tag_digest
    from mlci.registry.store import is_digest

    missing = PromotionRefused(f"{ref[:71]} is not in the registry; push it first (`mlci push`).")
    if ":" not in ref:
        # A tag that exists wins over a digest prefix (as in expand_ref); its manifest names the artifact.
        tagged = tag_digest(store, ref)
        if tagged is not None:
            return tagged
    full = expand_ref(store, ref)
    if not is_digest(full) or resolve(store, full) is None:  # a full digest: resolve expands nothing more
        raise missing
    return full


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
    """Point ``env`` at ``digest`` (or a unique prefix of it). Refused without a passing verdict, and without
    approval in manual mode."""
    from mlci.registry import tag_artifact, tag_digest

    _check_env(env)
    digest = _artifact_digest(store, digest)
    _require_passing(store, digest)
    if not (approve or continuous):
        raise PromotionRefused(
            f"Promoting {digest[:19]} to {env} needs a human's approval: re-run with --approve, "
            "or set [deploy] continuous_deployment = true to promote automatically after a passing gate."
        )
    history(store, env)  # a damaged history refuses the move here, before the tag moves without its entry
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
