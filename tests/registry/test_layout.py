"""The OCI image layout on disk: the spec's rules, standard tools reading it, and concurrent writers."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from mlci.errors import RegistryError
from mlci.registry import HttpStore, LayoutStore, pull_artifact, push_artifact, put_document, tag_digest
from mlci.registry.layout import REF_NAME
from mlci.registry.store import OCI_INDEX, OCI_MANIFEST, digest_bytes
from tests.registry.conftest import Registry

# image-spec image-layout.md: the ref.name grammar for index.json annotations.
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
REF_GRAMMAR = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DESCRIPTOR_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def check_layout(root: Path) -> dict[str, object]:
    """Assert the image-layout rules (oci-layout, index.json, blobs) hold for ``root``; return the index."""
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    blob_dir = root / "blobs" / "sha256"
    for path in blob_dir.iterdir():  # every blob is named by the hash of its content; nothing else lies there
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    for entry in index["manifests"]:
        assert DESCRIPTOR_DIGEST.fullmatch(entry["digest"]) and entry["mediaType"] == OCI_MANIFEST
        data = (blob_dir / entry["digest"].split(":")[1]).read_bytes()
        assert len(data) == entry["size"]
        if REF_NAME in entry.get("annotations", {}):
            assert REF_GRAMMAR.fullmatch(entry["annotations"][REF_NAME])
        manifest = json.loads(data)
        assert manifest["mediaType"] == OCI_MANIFEST and manifest["schemaVersion"] == 2
        assert entry.get("artifactType") == manifest.get("artifactType")
        for ref in [manifest["config"], *manifest["layers"]]:
            blob = (blob_dir / ref["digest"].split(":")[1]).read_bytes()
            assert digest_bytes(blob) == ref["digest"] and len(blob) == ref["size"]
    tags = [e["annotations"][REF_NAME] for e in index["manifests"] if REF_NAME in e.get("annotations", {})]
    assert len(tags) == len(set(tags)), "a tag names two manifests"
    return index


def test_layout_follows_the_image_layout_spec(tmp_path: Path, artifact_a: Path, artifact_b: Path) -> None:
    store = LayoutStore(tmp_path / "repo")
    a = push_artifact(store, artifact_a, tags=("candidate", "production"))
    push_artifact(store, artifact_b)
    put_document(store, "history", {"moves": []}, "history")
    index = check_layout(tmp_path / "repo")
    untagged = {e["digest"] for e in index["manifests"] if REF_NAME not in e.get("annotations", {})}  # type: ignore[index]
    assert a.manifest_digest in untagged  # reachable by digest whatever the tags do
    assert [p.name for p in (tmp_path / "repo").iterdir() if p.name.startswith(".tmp-")] == []


def test_empty_and_missing_layouts_read_as_empty(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "nothing")
    assert store.tags() == [] and store.get_manifest("candidate") is None
    assert not store.has_blob("sha256:" + "0" * 64)
    assert not (tmp_path / "nothing").exists()  # reading creates nothing


def test_a_directory_that_is_not_a_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("mine")
    with pytest.raises(RegistryError, match="is not an OCI image layout"):
        LayoutStore(tmp_path / "repo").put_blob(b"x", digest_bytes(b"x"))


def test_a_damaged_index_is_reported(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "repo")
    store.put_manifest(b'{"mediaType": "%s"}' % OCI_MANIFEST.encode(), OCI_MANIFEST, "candidate")
    (tmp_path / "repo" / "index.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"index\.json' is not valid JSON"):
        store.tags()


def test_concurrent_tag_writers_lose_no_update(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_bytes(b"{}"), "size": 2}
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty, "layers": []}).encode()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            # One store per thread (separate file descriptions, real flock contention), all racing to
            # create the layout as well.
            store = LayoutStore(root)
            store.put_blob(b"{}", digest_bytes(b"{}"))
            for i in range(15):
                store.put_manifest(data, OCI_MANIFEST, f"t{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(LayoutStore(root).tags()) == 6 * 15
    check_layout(root)


SKOPEO = shutil.which("skopeo")


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")
def test_skopeo_reads_the_layout_and_copies_it_through_a_registry(
    tmp_path: Path, artifact_a: Path, registry: Registry
) -> None:
    layout = tmp_path / "layout"
    result = push_artifact(LayoutStore(layout), artifact_a)
    raw = subprocess.run(
        [str(SKOPEO), "inspect", "--raw", f"oci:{layout}:candidate"], capture_output=True, check=True
    ).stdout
    assert digest_bytes(raw) == result.manifest_digest
    dest = f"docker://127.0.0.1:{registry.port}/mlci/skopeo-copy:candidate"
    for command in (
        ["copy", "--dest-tls-verify=false", f"oci:{layout}:candidate", dest],
        ["copy", "--src-tls-verify=false", dest, f"oci:{tmp_path / 'back'}:candidate"],
    ):
        proc = subprocess.run([str(SKOPEO), *command], capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
    with HttpStore(registry.url, "mlci/skopeo-copy") as store:  # pushed by skopeo, read by us
        assert (
            pull_artifact(store, "candidate", tmp_path / "from-registry")["digest"] == result.artifact_digest
        )
    back = LayoutStore(tmp_path / "back")  # a layout written by skopeo, read by us
    assert tag_digest(back, "candidate") == result.artifact_digest
    assert pull_artifact(back, "candidate", tmp_path / "from-layout")["digest"] == result.artifact_digest
