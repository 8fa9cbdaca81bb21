"""Push, pull, tag and documents, each run against an OCI layout and a real docker-registry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlci.errors import DataError, MlciError, RegistryError
from mlci.model.artifact import ARTIFACT_FILES, MANIFEST_FILE, read_manifest, verify_artifact
from mlci.registry import (
    Store,
    digest_tag,
    get_document,
    open_store,
    pull_artifact,
    push_artifact,
    put_document,
    resolve,
    tag_artifact,
    tag_digest,
)
from mlci.registry.artifacts import MODEL_ARTIFACT_TYPE, model_manifest
from mlci.registry.store import OCI_MANIFEST, digest_bytes
from tests.registry.conftest import Target

FILES = (*ARTIFACT_FILES, MANIFEST_FILE)


class Counting:
    """A store wrapper (passed in, not patched) that counts blob uploads and downloads."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.uploaded: list[str] = []
        self.downloaded: list[str] = []

    def has_blob(self, digest: str) -> bool:
        return self.inner.has_blob(digest)

    def put_blob(self, data: bytes, digest: str) -> None:
        self.uploaded.append(digest)
        self.inner.put_blob(data, digest)

    def put_blob_file(self, path: Path, digest: str) -> None:
        self.uploaded.append(digest)
        self.inner.put_blob_file(path, digest)

    def get_blob(self, digest: str, max_size: int = 1 << 26) -> bytes:
        self.downloaded.append(digest)
        return self.inner.get_blob(digest, max_size)

    def fetch_blob(self, digest: str, size: int, out: BinaryIO) -> None:
        self.downloaded.append(digest)
        self.inner.fetch_blob(digest, size, out)

    def put_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        return self.inner.put_manifest(data, media_type, ref)

    def get_manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        return self.inner.get_manifest(ref)

    def tags(self) -> list[str]:
        return self.inner.tags()


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir()] if parent.exists() else []


def test_round_trip_gives_identical_files_and_digest(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    result = push_artifact(store, artifact_a)
    assert result.tags == ("candidate", digest_tag(result.artifact_digest))
    assert set(store.tags()) == set(result.tags)
    pulled = pull_artifact(store, "candidate", tmp_path / "pulled")
    assert pulled["digest"] == result.artifact_digest == read_manifest(artifact_a)["digest"]
    for name in FILES:
        assert (tmp_path / "pulled" / name).read_bytes() == (artifact_a / name).read_bytes(), name
    assert verify_artifact(tmp_path / "pulled")["digest"] == result.artifact_digest


def test_oci_manifest_is_reproducible_and_annotated(store: Store, artifact_a: Path) -> None:
    mlci_manifest = read_manifest(artifact_a)
    first, blobs = model_manifest(artifact_a, mlci_manifest)
    assert model_manifest(artifact_a, mlci_manifest)[0] == first
    result = push_artifact(store, artifact_a)
    assert result.manifest_digest == digest_bytes(first)
    data, media_type, digest = store.get_manifest("candidate") or (b"", "", "")
    assert (data, media_type, digest) == (first, OCI_MANIFEST, result.manifest_digest)
    manifest = json.loads(data)
    assert manifest["schemaVersion"] == 2 and manifest["artifactType"] == MODEL_ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == "application/vnd.mlci.model.config.v1+json"
    assert blobs[manifest["config"]["digest"]] == artifact_a / MANIFEST_FILE
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]]
    assert sorted(titles) == sorted(FILES)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.mlci.model.onnx",
        "application/vnd.mlci.outlier.onnx",
        "application/vnd.mlci.profile.v1+json",
        "application/vnd.mlci.manifest.v1+json",
    }
    notes = manifest["annotations"]
    assert notes["dev.mlci.digest"] == mlci_manifest["digest"]
    assert notes["dev.mlci.name"] == "breast-cancer"
    assert float(notes["dev.mlci.metrics.accuracy"]) == mlci_manifest["evidence"]["metrics"]["accuracy"]
    assert "dev.mlci.metrics.per_class" not in notes  # only scalar metrics
    if mlci_manifest["runtime"].get("git_commit"):
        assert notes["org.opencontainers.image.revision"] == mlci_manifest["runtime"]["git_commit"]
    assert "org.opencontainers.image.created" not in notes


def test_pushing_twice_is_idempotent_and_reuses_blobs(
    store: Store, artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    counting = Counting(store)
    first = push_artifact(counting, artifact_a)
    assert len(counting.uploaded) == len(set(counting.uploaded)) == 4  # config == manifest.json layer
    counting.uploaded.clear()
    assert push_artifact(counting, artifact_a) == first
    assert counting.uploaded == []
    push_artifact(counting, artifact_b)
    shared = {digest_bytes((artifact_a / n).read_bytes()) for n in FILES} & {
        digest_bytes((artifact_b / n).read_bytes()) for n in FILES
    }
    assert len(counting.uploaded) == 4 - len(shared)


def test_tags_move_and_old_versions_stay_pullable(
    store: Store, artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    a = push_artifact(store, artifact_a, tags=("candidate", "production"))
    b = push_artifact(store, artifact_b)
    assert a.artifact_digest != b.artifact_digest
    assert tag_digest(store, "candidate") == b.artifact_digest
    assert tag_digest(store, "production") == a.artifact_digest
    assert tag_artifact(store, "staging", b.artifact_digest) == b.manifest_digest
    assert tag_digest(store, "staging") == b.artifact_digest
    tag_artifact(store, "production", "staging")  # promotion by tag
    assert tag_digest(store, "production") == b.artifact_digest
    assert tag_digest(store, "nothing-here") is None
    assert pull_artifact(store, a.artifact_digest, tmp_path / "old")["digest"] == a.artifact_digest
    with pytest.raises(RegistryError, match="Nothing named 'sha256:0000"):
        tag_artifact(store, "production", "sha256:" + "0" * 64)


def test_resolve_accepts_tag_mlci_digest_and_manifest_digest(store: Store, artifact_a: Path) -> None:
    result = push_artifact(store, artifact_a)
    for ref in (
        "candidate",
        result.artifact_digest,
        result.manifest_digest,
        digest_tag(result.artifact_digest),
    ):
        assert resolve(store, ref) == result.manifest_digest, ref
    assert resolve(store, "production") is None
    assert resolve(store, "sha256:" + "1" * 64) is None


def test_pull_into_an_existing_copy_downloads_nothing(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    push_artifact(store, artifact_a)
    dest = tmp_path / "pulled"
    pull_artifact(store, "candidate", dest)
    counting = Counting(store)
    assert pull_artifact(counting, "candidate", dest)["digest"] == read_manifest(artifact_a)["digest"]
    assert counting.downloaded == []


def test_pull_refuses_to_overwrite_a_different_directory(
    store: Store, artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    push_artifact(store, artifact_a)
    dest = tmp_path / "other"
    shutil.copytree(artifact_b, dest)
    with pytest.raises(RegistryError, match="already exists and does not hold"):
        pull_artifact(store, "candidate", dest)
    assert verify_artifact(dest)["digest"] == read_manifest(artifact_b)["digest"]


def test_pull_of_unknown_ref_names_the_tags(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    push_artifact(store, artifact_a)
    with pytest.raises(RegistryError, match=r"Nothing named 'production'.*candidate") as info:
        pull_artifact(store, "production", tmp_path / "x")
    assert info.value.exit_code == 1
    assert not (tmp_path / "x").exists()


def test_documents_round_trip_and_are_not_models(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    assert get_document(store, "history") is None
    first = put_document(store, "history", {"moves": [{"to": "sha256:1", "why": "first"}]}, "history")
    assert get_document(store, "history") == {"moves": [{"to": "sha256:1", "why": "first"}]}
    second = put_document(store, "history", {"moves": []}, "history")
    assert second != first and get_document(store, "history") == {"moves": []}
    assert (
        json.loads((store.get_manifest("history") or (b"{}",))[0])["artifactType"]
        == "application/vnd.mlci.history.v1"
    )
    with pytest.raises(RegistryError, match="not an mlci model"):
        pull_artifact(store, "history", tmp_path / "x")
    push_artifact(store, artifact_a)
    with pytest.raises(RegistryError, match="not an mlci document"):
        get_document(store, "candidate")
    with pytest.raises(MlciError, match="kind"):
        put_document(store, "verdict", {}, "Bad Kind")


# -- faults ---------------------------------------------------------------------------------------


def test_tampered_artifact_is_refused_before_any_upload(
    store: Store, artifact_a: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(artifact_a, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    counting = Counting(store)
    with pytest.raises(DataError, match=r"model\.onnx"):
        push_artifact(counting, tampered)
    assert counting.uploaded == [] and store.tags() == []


def test_corrupted_blob_fails_the_pull_and_leaves_nothing(
    store: Store, target: Target, artifact_a: Path, tmp_path: Path
) -> None:
    push_artifact(store, artifact_a)
    model_digest = digest_bytes((artifact_a / "model.onnx").read_bytes())
    blob = target.blob_file(model_digest)
    original = blob.read_bytes()
    corrupted = bytearray(original)
    corrupted[100:108] = bytes(b ^ 0x5A for b in corrupted[100:108])
    blob.write_bytes(bytes(corrupted))
    try:
        with pytest.raises(RegistryError) as info:
            pull_artifact(store, "candidate", tmp_path / "out" / "pulled")
    finally:
        blob.write_bytes(original)  # registry blobs are shared by the whole session
    message = str(info.value)
    assert "model.onnx" in message and model_digest in message and digest_bytes(bytes(corrupted)) in message
    assert "corrupted" in message and info.value.exit_code == 1
    assert leftovers(tmp_path / "out") == []


def test_corrupted_manifest_fails_resolution_and_pull(
    store: Store, target: Target, artifact_a: Path, tmp_path: Path
) -> None:
    result = push_artifact(store, artifact_a)
    blob = target.blob_file(result.manifest_digest)
    original = blob.read_bytes()
    assert b'"breast-cancer"' in original
    blob.write_bytes(original.replace(b'"breast-cancer"', b'"breast-cancex"'))  # still valid JSON
    try:
        for ref in ("candidate", result.manifest_digest, result.artifact_digest):
            with pytest.raises(
                RegistryError, match=rf"expected digest {result.manifest_digest}, got sha256:"
            ):
                pull_artifact(store, ref, tmp_path / "pulled")
    finally:
        blob.write_bytes(original)
    assert not (tmp_path / "pulled").exists()


KILLER = """
import os, signal, sys
from pathlib import Path
from mlci.registry import open_store, push_artifact

url, repository, artifact, stop_at = sys.argv[1:]
def on_progress(event):
    if event == stop_at:
        os.kill(os.getpid(), signal.SIGKILL)
push_artifact(open_store(url, repository), Path(artifact), tags=("candidate", "production"), on_progress=on_progress)
"""


@pytest.mark.parametrize("stop_at", ["blobs", "manifest"])
def test_push_killed_before_the_tag_move_leaves_old_tags_intact(
    store: Store, target: Target, artifact_a: Path, artifact_b: Path, tmp_path: Path, stop_at: str
) -> None:
    old = push_artifact(store, artifact_a, tags=("candidate", "production"))
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, target.url, target.repository, str(artifact_b), stop_at],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    new_digest = read_manifest(artifact_b)["digest"]
    assert tag_digest(store, "candidate") == tag_digest(store, "production") == old.artifact_digest
    assert digest_tag(new_digest) not in store.tags()
    new_manifest = digest_bytes(model_manifest(artifact_b, read_manifest(artifact_b))[0])
    assert (resolve(store, new_manifest) is not None) == (stop_at == "manifest")
    pulled = pull_artifact(store, "production", tmp_path / "production")
    assert pulled["digest"] == old.artifact_digest == verify_artifact(tmp_path / "production")["digest"]
    # The interrupted push can simply be repeated.
    push_artifact(store, artifact_b, tags=("candidate",))
    assert tag_digest(store, "candidate") == new_digest


def test_layer_with_unsafe_title_is_not_written(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    data, _ = model_manifest(artifact_a, read_manifest(artifact_a))
    push_artifact(store, artifact_a)
    evil = json.loads(data)
    evil["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../escaped.onnx"
    evil_bytes = json.dumps(evil).encode()
    store.put_manifest(evil_bytes, OCI_MANIFEST, "evil")
    with pytest.raises(RegistryError, match=re.escape("unsafe or repeated file name '../escaped.onnx'")):
        pull_artifact(store, "evil", tmp_path / "sub" / "dest")
    assert not (tmp_path / "sub" / "escaped.onnx").exists() and leftovers(tmp_path / "sub") == []
    assert not (tmp_path / "sub" / "dest").exists()  # refused before anything was created


ENVIRONMENTS = ("candidate", "staging", "production")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["push-a", "push-b", "tag"]),
            st.sampled_from(ENVIRONMENTS),
            st.sampled_from(ENVIRONMENTS),
        ),
        max_size=6,
    )
)
def test_tags_follow_any_sequence_of_pushes_and_moves(
    target: Target, artifact_a: Path, artifact_b: Path, ops: list[tuple[str, str, str]]
) -> None:
    digests = {"push-a": read_manifest(artifact_a)["digest"], "push-b": read_manifest(artifact_b)["digest"]}
    expected: dict[str, str] = {}
    with open_store(target.url, f"{target.repository}-{uuid.uuid4().hex[:8]}") as store:
        for op, tag, source in ops:
            if op == "tag":
                if source in expected:
                    tag_artifact(store, tag, source)
                    expected[tag] = expected[source]
                else:
                    with pytest.raises(RegistryError, match="Nothing named"):
                        tag_artifact(store, tag, source)
            else:
                push_artifact(store, artifact_a if op == "push-a" else artifact_b, tags=(tag,))
                expected[tag] = expected[digest_tag(digests[op])] = digests[op]
        assert set(store.tags()) == set(expected)
        for tag in (*ENVIRONMENTS, *map(digest_tag, digests.values())):
            assert tag_digest(store, tag) == expected.get(tag)
