"""Promotion, rollback and status on a real registry store; no command path tags a failing candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.config import load_config
from mlci.pipeline import run_pipeline
from mlci.registry import open_store, push_artifact, tag_digest
from mlci.release.promote import (
    PromotionRefused,
    Release,
    history,
    promote,
    rollback,
    status,
    store_verdict,
    verdict_for,
)

from .conftest import EXAMPLE, reseal

CLOCK = iter(f"2026-01-01T00:00:{i:02d}Z" for i in range(10**6))
RELEASE = Release("alice", clock=lambda: next(CLOCK))


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four distinct, valid artifacts: one real training, three re-sealed variants of it."""
    base = tmp_path_factory.mktemp("promote")
    shutil.copytree(EXAMPLE, base / "example", ignore=shutil.ignore_patterns(".mlci"))
    artifact = run_pipeline(load_config(base / "example" / "mlci.toml"), until="evaluate").artifact
    assert artifact is not None
    out = [artifact]
    for i in range(1, 4):
        copy = base / f"variant{i}"
        shutil.copytree(artifact, copy)
        profile = json.loads((copy / "profile.json").read_text())
        profile["variant"] = i
        (copy / "profile.json").write_text(json.dumps(profile))
        reseal(copy)
        out.append(copy)
    return out


def pushed(tmp_path: Path, variants: list[Path]) -> tuple[object, list[str]]:
    store = open_store(f"oci-layout:{tmp_path / 'registry'}", "demo")
    digests = [push_artifact(store, v).artifact_digest for v in variants]
    return store, digests


def verdict(digest: str, passed: bool) -> dict[str, object]:
    return {"candidate": digest, "passed": passed, "checks": [{"name": "min accuracy", "passed": passed}]}


def test_promote_needs_a_passing_verdict_and_approval(tmp_path: Path, variants: list[Path]) -> None:
    store, (a, b, *_) = pushed(tmp_path, variants)
    with pytest.raises(PromotionRefused, match="no gate verdict"):
        promote(store, "staging", a, release=RELEASE, approve=True)
    store_verdict(store, verdict(b, False))
    with pytest.raises(PromotionRefused, match="failed the gate \\(min accuracy\\)"):
        promote(store, "staging", b, release=RELEASE, approve=True)
    store_verdict(store, verdict(a, True))
    with pytest.raises(PromotionRefused, match="--approve"):
        promote(store, "production", a, release=RELEASE)
    assert tag_digest(store, "production") is None and tag_digest(store, "staging") is None
    entry = promote(store, "production", a, release=RELEASE, approve=True, reason="release 1")
    assert entry["to"] == a and entry["from"] is None and entry["by"] == "alice" and entry["why"] == "release 1"
    auto = promote(store, "staging", a, release=RELEASE, continuous=True)
    assert auto["why"].startswith("continuous deployment")


def test_rollback_walks_back_and_never_bounces(tmp_path: Path, variants: list[Path]) -> None:
    store, (a, b, c, _) = pushed(tmp_path, variants)
    for d in (a, b, c):
        store_verdict(store, verdict(d, True))
        promote(store, "production", d, release=RELEASE, approve=True)
    assert rollback(store, "production", release=RELEASE)["to"] == b
    assert rollback(store, "production", release=RELEASE)["to"] == a
    with pytest.raises(PromotionRefused, match="no earlier version"):
        rollback(store, "production", release=RELEASE)
    assert tag_digest(store, "production") == a
    moves = [(e["action"], e["to"]) for e in history(store, "production")]
    assert moves == [("promote", a), ("promote", b), ("promote", c), ("rollback", b), ("rollback", a)]


def test_rollback_of_an_unpromoted_environment_is_refused(tmp_path: Path, variants: list[Path]) -> None:
    store, _ = pushed(tmp_path, variants)
    with pytest.raises(PromotionRefused, match="never been promoted"):
        rollback(store, "staging", release=RELEASE)


def test_status_reports_history_and_untracked_moves(tmp_path: Path, variants: list[Path]) -> None:
    from mlci.registry import tag_artifact

    store, (a, b, *_) = pushed(tmp_path, variants)
    store_verdict(store, verdict(a, True))
    promote(store, "staging", a, release=RELEASE, approve=True)
    report = status(store)
    assert report["staging"]["digest"] == a and report["staging"]["consistent"]
    assert report["production"] == {"digest": None, "history": [], "consistent": True}
    tag_artifact(store, "staging", b)  # a tag moved behind mlci's back (or a crash before the history write)
    assert status(store)["staging"]["consistent"] is False


def test_history_survives_the_machine(tmp_path: Path, variants: list[Path]) -> None:
    store, (a, *_) = pushed(tmp_path, variants)
    store_verdict(store, verdict(a, True))
    promote(store, "production", a, release=RELEASE, approve=True)
    reopened = open_store(f"oci-layout:{tmp_path / 'registry'}", "demo")  # a new process, same registry
    assert [e["to"] for e in history(reopened, "production")] == [a]
    assert verdict_for(reopened, a)["passed"] is True  # type: ignore[index]


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("verdict"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("promote"), st.sampled_from(["staging", "production"]), st.integers(0, 3), st.booleans(), st.booleans()),
        st.tuples(st.just("rollback"), st.sampled_from(["staging", "production"])),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_no_command_sequence_tags_a_failing_candidate(tmp_path_factory: pytest.TempPathFactory, variants: list[Path], actions: list[tuple]) -> None:
    store, digests = pushed(tmp_path_factory.mktemp("prop"), variants)
    judged: dict[str, bool] = {}
    for action in actions:
        try:
            if action[0] == "verdict":
                digest = digests[action[1]]
                if digest not in judged:  # the gate judges each artifact once
                    judged[digest] = action[2]
                    store_verdict(store, verdict(digest, action[2]))
            elif action[0] == "promote":
                promote(store, action[1], digests[action[2]], release=RELEASE, approve=action[3], continuous=action[4])
            else:
                rollback(store, action[1], release=RELEASE)
        except PromotionRefused:
            pass
        for env in ("staging", "production"):
            current = tag_digest(store, env)
            assert current is None or judged.get(current) is True, f"{env} points at {current} judged {judged.get(current)}"
            assert all(judged.get(e["to"]) is True for e in history(store, env))
