"""The promotion history under concurrency and damage, on an OCI layout and on a real docker-registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlci.canonical import canonical_json
from mlci.errors import RegistryError
from mlci.registry import Store, push_artifact, tag_digest
from mlci.registry.store import OCI_MANIFEST, digest_bytes
from mlci.release.promote import Release, history, promote, rollback, status, store_verdict
from tests.registry.conftest import Target

ROUNDS = 12

# One promoter: it connects, then promotes once per line on stdin, so that both promoters of a round read
# and write the registry at the same moment (what two CI jobs triggered by one push do). docker-registry's
# filesystem storage rewrites a tag's link file in place, so a read racing a tag move can get a 500; the
# promoter retries that (as a CI job would be re-run) and reports how often, since a retry after the move
# was stored may record it twice. Any other error ends it.
PROMOTER = """
import sys, time
from mlci.errors import RegistryError
from mlci.registry import open_store
from mlci.release.promote import Release, promote

url, repository, digest, name = sys.argv[1:]
store = open_store(url, repository)
for line in sys.stdin:
    for retries in range(10):
        try:
            promote(store, "staging", digest, release=Release(name), approve=True, reason=f"{line.strip()} by {name}")
            break
        except RegistryError as exc:
            if " answered 5" not in str(exc):
                raise
            time.sleep(0.05)
    else:
        raise SystemExit("the registry kept answering 5xx")
    print(f"done {retries}", flush=True)
"""


def passing(store: Store, *artifacts: Path) -> list[str]:
    digests = [push_artifact(store, artifact).artifact_digest for artifact in artifacts]
    for digest in digests:
        store_verdict(store, {"candidate": digest, "passed": True, "checks": []})
    return digests


def test_concurrent_promotions_record_every_move(target: Target, store: Store, artifact_a: Path, artifact_b: Path) -> None:
    """Attack: two `promote staging` at the same moment, 12 times. The history was read, appended to and
    rewritten as one document, so the later write dropped the other's entry: 17 of 24 moves were recorded
    and `status` still said consistent."""
    a, b = passing(store, artifact_a, artifact_b)
    promoters = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTER, target.url, target.repository, digest, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for digest, name in ((a, "alice"), (b, "bob"))
    ]
    retried = 0
    try:
        for i in range(ROUNDS):
            for p in promoters:
                assert p.stdin is not None
                p.stdin.write(f"round {i}\n")
                p.stdin.flush()
            for p in promoters:
                assert p.stdout is not None
                done = p.stdout.readline()
                assert done.startswith("done "), p.stderr.read() if p.stderr else ""
                retried += int(done.split()[1])
    finally:
        for p in promoters:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(60)
    entries = history(store, "staging")
    expected = {f"round {i} by {name}" for i in range(ROUNDS) for name in ("alice", "bob")}
    recorded = [e["why"] for e in entries]
    assert set(recorded) == expected, f"{len(expected - set(recorded))} of {len(expected)} moves not recorded"
    assert len(expected) <= len(recorded) <= len(expected) + retried  # twice only for a retried move
    assert {e["to"] for e in entries} == {a, b} and {e["from"] for e in entries} <= {None, a, b}
    assert tag_digest(store, "staging") in (a, b)
    assert len(status(store)["staging"]["history"]) == len(recorded)


def plant(store: Store, tag: str, body: bytes) -> None:
    """Store ``body`` under ``tag`` as an mlci history document, as a damaged or hostile registry holds it."""
    empty = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.mlci.history.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_bytes(empty), "size": len(empty)},
        "layers": [
            {
                "mediaType": "application/vnd.mlci.history.v1+json",
                "digest": digest_bytes(body),
                "size": len(body),
                "annotations": {"org.opencontainers.image.title": "history.json"},
            }
        ],
        "annotations": {"dev.mlci.kind": "history"},
    }
    for blob in (empty, body):
        if not store.has_blob(digest_bytes(blob)):
            store.put_blob(blob, digest_bytes(blob))
    store.put_manifest(canonical_json(manifest), OCI_MANIFEST, tag)


DAMAGED = {
    "not JSON": b'{"environment": "staging", "entries": [',
    "deeply nested": b'{"entries": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "entries not a list": b'{"environment": "staging", "entries": "all of them"}',
    "an entry without its fields": b'{"environment": "staging", "entries": [{"to": 7}]}',
}


@pytest.mark.parametrize("body", DAMAGED.values(), ids=list(DAMAGED))
def test_a_damaged_history_is_a_clean_error_and_moves_no_tag(store: Store, artifact_a: Path, artifact_b: Path, body: bytes) -> None:
    """Attack: the registry's history document is damaged (invalid JSON, nested 100,000 deep, the wrong shape).

    Reading it raised JSONDecodeError, RecursionError or KeyError (a traceback), and `promote` moved the tag
    first and crashed on the history afterwards: a tag moved without its entry.
    """
    a, b = passing(store, artifact_a, artifact_b)
    release = Release("alice")
    promote(store, "staging", a, release=release, approve=True)
    plant(store, "history-staging", body)
    with pytest.raises(RegistryError, match="history-staging"):
        history(store, "staging")
    with pytest.raises(RegistryError, match="history-staging"):
        status(store)
    with pytest.raises(RegistryError, match="history-staging"):
        promote(store, "staging", b, release=release, approve=True)
    with pytest.raises(RegistryError, match="history-staging"):
        rollback(store, "staging", release=release)
    assert tag_digest(store, "staging") == a


def test_a_damaged_move_record_is_a_clean_error_and_moves_no_tag(store: Store, artifact_a: Path, artifact_b: Path) -> None:
    """Attack: one move's record in the registry is damaged (nested 100,000 deep); the same must hold for it."""
    a, b = passing(store, artifact_a, artifact_b)
    release = Release("alice")
    promote(store, "staging", a, release=release, approve=True)
    damaged = "history-staging-20260101T000000.000000000Z-0badf00d"
    plant(store, damaged, b'{"entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(RegistryError, match=damaged):
        history(store, "staging")
    with pytest.raises(RegistryError, match=damaged):
        promote(store, "staging", b, release=release, approve=True)
    assert tag_digest(store, "staging") == a
