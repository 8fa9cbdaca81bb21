"""Digest prefixes: the short form mlci prints (``sha256:<12 hex>``) names an artifact wherever a digest is
taken, in an OCI layout and in a real docker-registry; an ambiguous prefix lists its matches, and text that
is neither a tag nor a digest is a clear error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlci.cli import cli
from mlci.errors import ConfigError, RegistryError
from mlci.model.artifact import manifest_digest, read_manifest
from mlci.registry import Store, expand_ref, pull_artifact, push_artifact, resolve, tag_digest
from mlci.registry.artifacts import MIN_DIGEST_PREFIX
from mlci.release.promote import Release, history, promote, store_verdict
from tests.conftest import reseal
from tests.registry.conftest import Target

RELEASE = Release("alice", clock=lambda: "2026-01-01T00:00:00Z")


def short(digest: str) -> str:
    """The form mlci prints: ``sha256:`` and the first 12 hex digits."""
    return digest[:19]


def colliding_pair(artifact: Path, root: Path, width: int = MIN_DIGEST_PREFIX) -> tuple[Path, Path]:
    """Two real, valid variants of ``artifact`` whose digests share their first ``width`` hex digits.

    Only profile.json differs between them; the search recomputes the manifest digest in memory (a birthday
    search: about 2**(2*width) tries for width 7), then writes and reseals just the two that collide.
    """
    manifest = read_manifest(artifact)
    profile = json.loads((artifact / "profile.json").read_text())
    seen: dict[str, int] = {}
    i = 0
    while True:
        i += 1
        profile["variant"] = i
        body = json.dumps(profile).encode()
        manifest["files"]["profile.json"] = {
            **manifest["files"]["profile.json"], "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
        }  # fmt: skip
        head = manifest_digest(manifest)[7 : 7 + width]
        if head in seen:
            break
        seen[head] = i
    out = []
    for n in (seen[head], i):
        copy = root / f"variant{n}"
        shutil.copytree(artifact, copy)
        profile["variant"] = n
        (copy / "profile.json").write_text(json.dumps(profile))
        reseal(copy)
        out.append(copy)
    return out[0], out[1]


def test_a_prefix_names_the_artifact_in_both_kinds_of_store(
    store: Store, artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    """The short form, bare hex, the minimum length and the full digest all resolve; so do pulls."""
    a = push_artifact(store, artifact_a).artifact_digest
    b = push_artifact(store, artifact_b).artifact_digest
    hexa = a.split(":", 1)[1]
    for ref in (
        short(a),
        hexa[:12],
        "sha256:" + hexa[:MIN_DIGEST_PREFIX],
        hexa[:MIN_DIGEST_PREFIX],
        a,
        hexa,
        short(a).upper(),
    ):
        assert expand_ref(store, ref) == a, ref
    assert expand_ref(store, short(b)) == b
    assert expand_ref(store, "candidate") == "candidate"  # a tag stays a tag
    assert resolve(store, short(a)) == resolve(store, a)
    assert pull_artifact(store, short(b), tmp_path / "pulled")["digest"] == b


@pytest.mark.slow  # the birthday search for two real digests sharing 7 hex digits takes ~45 s per store
def test_an_ambiguous_prefix_lists_every_match(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    first, second = colliding_pair(artifact_a, tmp_path)
    a = push_artifact(store, first).artifact_digest
    b = push_artifact(store, second).artifact_digest
    assert a != b and a[: 7 + MIN_DIGEST_PREFIX] == b[: 7 + MIN_DIGEST_PREFIX]
    with pytest.raises(ConfigError) as caught:
        expand_ref(store, a[: 7 + MIN_DIGEST_PREFIX])
    message = str(caught.value)
    assert "ambiguous" in message and a in message and b in message and "more digits" in message
    # One more digit (where they differ) is unique again.
    n = next(k for k in range(7, 71) if a[k] != b[k])
    assert expand_ref(store, a[: n + 1]) == a and expand_ref(store, b[: n + 1]) == b


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("sha256:7ccec6", f"at least {MIN_DIGEST_PREFIX} hex digits"),
        ("sha256:", f"at least {MIN_DIGEST_PREFIX} hex digits"),
        ("sha256:xyz1234567", "hexadecimal"),
        ("sha256:" + "a" * 65, "at most 64"),
        ("md5:0123456789", "sha256:"),
    ],
)
def test_text_that_is_no_digest_is_a_clear_error(store: Store, ref: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        expand_ref(store, ref)
    assert words in str(caught.value) and repr(ref) in str(caught.value)


def test_a_prefix_nothing_has_says_so_and_lists_what_there_is(store: Store, artifact_a: Path) -> None:
    a = push_artifact(store, artifact_a).artifact_digest
    absent = "0123456789ab" if not a[7:].startswith("0123456789ab") else "ba9876543210"
    with pytest.raises(RegistryError) as caught:
        expand_ref(store, "sha256:" + absent)
    assert f"sha256:{absent}" in str(caught.value) and short(a) in str(caught.value)
    with pytest.raises(RegistryError):
        expand_ref(store, absent)  # bare hex that is no tag either


def test_promote_takes_the_short_form_and_bare_hex(store: Store, artifact_a: Path, artifact_b: Path) -> None:
    """Issue 13 item 8: `promote --digest sha256:7ccec6b691b5` was refused as "not a valid tag", and the bare
    hex as "not in the registry; push it first"."""
    a = push_artifact(store, artifact_a).artifact_digest
    b = push_artifact(store, artifact_b).artifact_digest
    for d in (a, b):
        store_verdict(store, {"candidate": d, "passed": True, "checks": []})
    assert promote(store, "staging", short(a), release=RELEASE, approve=True)["to"] == a
    assert promote(store, "staging", b.split(":", 1)[1][:12], release=RELEASE, approve=True)["to"] == b
    assert tag_digest(store, "staging") == b
    assert [e["to"] for e in history(store, "staging")] == [a, b]


@pytest.mark.parametrize("tag", ["deadbeef01", "candidate"])
def test_a_tag_is_looked_up_once_to_name_its_artifact(
    store: Store, artifact_a: Path, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """promote's _artifact_digest expanded the ref, then read the tag again (and resolve expanded once more):
    a hex-looking tag cost the registry three manifest round trips, a plain tag two."""
    from mlci.registry import tag_artifact
    from mlci.release.promote import _artifact_digest

    a = push_artifact(store, artifact_a).artifact_digest
    tag_artifact(store, tag, a)
    asked: list[str] = []
    get_manifest = store.get_manifest

    def counting(ref: str) -> object:
        asked.append(ref)
        return get_manifest(ref)

    monkeypatch.setattr(store, "get_manifest", counting)
    assert _artifact_digest(store, tag) == a
    assert asked == [tag], asked
    asked.clear()
    assert _artifact_digest(store, short(a)) == a  # a prefix still lists, then checks the one match
    assert tag not in asked and len(asked) == len(set(asked)), asked


def test_the_cli_takes_prefixes_for_promote_and_pull(
    tmp_path: Path, target: Target, artifact_a: Path
) -> None:
    """`mlci promote --digest` and `mlci pull` with the short form, through the real CLI."""
    from tests.conftest import EXAMPLE

    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    toml.write_text(
        toml.read_text() + f'\n[registry]\nurl = "{target.url}"\nrepository = "{target.repository}"\n'
    )
    store = target.open()
    a = push_artifact(store, artifact_a).artifact_digest
    store_verdict(store, {"candidate": a, "passed": True, "checks": []})
    runner = CliRunner()
    done = runner.invoke(
        cli, ["promote", "staging", "-c", str(toml), "--digest", short(a), "--approve", "--no-deploy"]
    )
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"staging → {a}"
    done = runner.invoke(
        cli,
        [
            "pull",
            a[7:19],
            "--registry",
            target.url,
            "--repository",
            target.repository,
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert done.exit_code == 0 and a in done.output, done.output
    done = runner.invoke(
        cli, ["promote", "staging", "-c", str(toml), "--digest", "sha256:not-hex!", "--approve"]
    )
    assert done.exit_code == 2 and "hexadecimal" in done.output, done.output
