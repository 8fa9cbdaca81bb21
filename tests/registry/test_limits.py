"""Size and time limits on what a registry returns, and on what a push holds in memory.

Attacks reproduced against a hostile registry on 127.0.0.1 (and against the real stores where the
registry itself can be made to hold the crafted content): a layer served far past its declared size, an
oversized manifest, a tag list whose `Link: rel=next` loops or never ends, a layer the artifact does not
have, a registry that drips its answer a byte at a time, and a push that reads whole files into memory.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mlci.registry.http as registry_http
from mlci.errors import RegistryError
from mlci.model.artifact import ARTIFACT_FILES, MANIFEST_FILE, read_manifest
from mlci.registry import HttpStore, Store, fetch, pull_artifact, push_artifact
from mlci.registry.artifacts import TITLE, model_manifest
from mlci.registry.store import OCI_MANIFEST, digest_bytes
from tests.conftest import reseal
from tests.registry.hostile import Exchange, Hostile, serve_registry, stalled_headers

FILES = (*ARTIFACT_FILES, MANIFEST_FILE)
REPO = "acme/model"
MiB = 1 << 20


def oci_parts(artifact: Path) -> tuple[bytes, dict[str, bytes], dict[str, str]]:
    """The OCI manifest mlci pushes for ``artifact``, its blobs by digest, and each file's digest by name."""
    data, _ = model_manifest(artifact, read_manifest(artifact))
    blobs = {digest_bytes(b): b for b in ((artifact / n).read_bytes() for n in FILES)}
    by_name = {layer["annotations"][TITLE]: layer["digest"] for layer in json.loads(data)["layers"]}
    return data, blobs, by_name


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_layer_served_past_its_declared_size_is_cut_off(artifact_a: Path, tmp_path: Path, chunked: bool) -> None:
    """profile.json is declared at its real size (a few KiB) and served as 200 MiB: the old pull read all
    of it into memory (the issue saw 4.2 GB of RSS for 2 GiB) before noticing the size was wrong."""
    manifest, blobs, by_name = oci_parts(artifact_a)
    declared = len((artifact_a / "profile.json").read_bytes())
    flood: Callable[[Exchange], None] = lambda ex: ex.stream(200 * MiB, chunked=chunked)  # noqa: E731
    with Hostile() as hostile:
        serve_registry(hostile, REPO, manifest, blobs, overrides={by_name["profile.json"]: flood})
        with HttpStore(hostile.origin, REPO) as store, pytest.raises(RegistryError) as info:
            pull_artifact(store, "candidate", tmp_path / "out" / "pulled")
        sent = hostile.settled()
    message = str(info.value)
    assert "profile.json" in message and f"{declared:,} bytes" in message, message
    assert "larger than" in message and info.value.exit_code == 1
    assert sent < 64 * MiB, f"the client let the registry send {sent:,} bytes for a {declared:,}-byte layer"
    assert leftovers(tmp_path / "out") == []


def test_an_oversized_manifest_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A tag whose manifest is 100 MiB: the old code read it whole into memory before parsing it."""
    flood: Callable[[Exchange], None] = lambda ex: ex.stream(  # noqa: E731
        100 * MiB, headers={"Content-Type": OCI_MANIFEST}
    )
    with Hostile() as hostile:
        hostile.route(f"/v2/{REPO}/manifests/candidate", flood)
        with HttpStore(hostile.origin, REPO) as store, pytest.raises(RegistryError) as info:
            pull_artifact(store, "candidate", tmp_path / "pulled")
        sent = hostile.settled()
    assert "manifest" in str(info.value) and "larger than" in str(info.value), str(info.value)
    assert sent < 64 * MiB, f"the client read {sent:,} bytes of a manifest"
    assert not (tmp_path / "pulled").exists()


def tag_pages(hostile: Hostile, next_of: Callable[[str], str | None], stop_after: int) -> None:
    """Tag-list pages whose Link header ``next_of(query)`` names; after ``stop_after`` requests, 500s
    (so that code which never stops following them still ends, with a different error)."""

    def page(ex: Exchange) -> None:
        if len(hostile.seen(f"/v2/{REPO}/tags/list")) > stop_after:
            ex.json(500, {"errors": [{"code": "STOP", "message": "the test server stopped answering"}]})
            return
        query = ex.seen.target.partition("?")[2]
        link = next_of(query)
        ex.json(200, {"name": REPO, "tags": [f"t{len(hostile.requests)}"]}, {"Link": f'<{link}>; rel="next"'} if link else {})

    hostile.route(f"/v2/{REPO}/tags/list", page)


def test_a_tag_list_link_loop_is_detected(tmp_path: Path) -> None:
    """Page 1 links to page 2, which links back to page 1: the old code followed it forever (856
    requests in 40 s in the issue; here the server gives up after 200 and the old code reports a 500)."""
    with Hostile() as hostile:
        tag_pages(
            hostile,
            lambda q: f"/v2/{REPO}/tags/list?n=1000&last=a" if "last" not in q else f"/v2/{REPO}/tags/list?n=1000",
            stop_after=200,
        )
        with HttpStore(hostile.origin, REPO) as store, pytest.raises(RegistryError, match="loop") as info:
            store.tags()
        asked = len(hostile.seen(f"/v2/{REPO}/tags/list"))
    assert asked == 2, f"{asked} tag-list requests"
    assert "tags/list?n=1000" in str(info.value)


def test_an_endless_tag_list_stops_at_the_page_limit(tmp_path: Path) -> None:
    """Every page links to a new one (``last`` counts up): no loop to see, so a page count must stop it."""
    limit = registry_http.MAX_TAG_PAGES
    with Hostile() as hostile:
        tag_pages(hostile, lambda q: f"/v2/{REPO}/tags/list?n=1&last={len(hostile.requests)}", stop_after=limit + 500)
        with HttpStore(hostile.origin, REPO) as store, pytest.raises(RegistryError, match=f"{limit:,} pages"):
            store.tags()
        assert len(hostile.seen(f"/v2/{REPO}/tags/list")) == limit


@pytest.mark.parametrize("extra", [True, False], ids=["unlisted-layer", "missing-layer"])
def test_pull_takes_exactly_the_artifact_files(
    store: Store, artifact_a: Path, tmp_path: Path, extra: bool
) -> None:
    """A registry (here a real one, written to directly) adds a layer the artifact does not have, or
    drops one: the old pull wrote the 8 MiB extra.bin into the artifact and `verify` said ok."""
    push_artifact(store, artifact_a)
    manifest = json.loads((store.get_manifest("candidate") or (b"{}",))[0])
    if extra:
        junk = b"\0" * (8 * MiB)
        store.put_blob(junk, digest_bytes(junk))
        manifest["layers"].append(
            {"mediaType": "application/octet-stream", "digest": digest_bytes(junk), "size": len(junk), "annotations": {TITLE: "extra.bin"}}
        )
    else:
        manifest["layers"] = [la for la in manifest["layers"] if la["annotations"][TITLE] != "outlier.onnx"]
    data = json.dumps(manifest).encode()
    store.put_manifest(data, OCI_MANIFEST, "crafted")
    with pytest.raises(RegistryError) as info:
        pull_artifact(store, "crafted", tmp_path / "out" / "pulled")
    message = str(info.value)
    assert ("'extra.bin'" if extra else "'outlier.onnx'") in message, message
    assert "exactly" in message and "manifest.json, model.onnx, outlier.onnx, profile.json" in message
    assert leftovers(tmp_path / "out") == []
    assert leftovers(tmp_path / "cache") == []
    with pytest.raises(RegistryError):
        fetch(store, "crafted", tmp_path / "cache")  # what `mlci serve --registry` does
    assert leftovers(tmp_path / "cache") == []


def big_artifact(artifact: Path, out: Path, size: int) -> Path:
    """A copy of ``artifact`` whose profile.json is ``size`` bytes of valid JSON, re-sealed."""
    shutil.copytree(artifact, out)
    profile: dict[str, Any] = json.loads((out / "profile.json").read_text())
    profile["padding"] = "x" * size
    (out / "profile.json").write_text(json.dumps(profile))
    reseal(out)
    return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most memory Python allocated at once while ``fn`` ran."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_push_and_pull_stream_files_instead_of_holding_them(store: Store, artifact_a: Path, tmp_path: Path) -> None:
    """A 48 MiB profile.json: the old push read every file whole (and the old pull every blob) into
    memory, so peak memory grew with the artifact."""
    big = big_artifact(artifact_a, tmp_path / "big", 48 * MiB)
    pushed = peak_bytes(lambda: push_artifact(store, big))
    pulled = peak_bytes(lambda: pull_artifact(store, "candidate", tmp_path / "pulled"))
    assert (tmp_path / "pulled" / "profile.json").read_bytes() == (big / "profile.json").read_bytes()
    assert pushed < 8 * MiB, f"push peaked at {pushed / MiB:.1f} MiB for a 48 MiB file"
    assert pulled < 8 * MiB, f"pull peaked at {pulled / MiB:.1f} MiB for a 48 MiB file"


def test_a_download_that_drips_is_stopped_by_the_total_time_limit(artifact_a: Path, tmp_path: Path) -> None:
    """The manifest arrives one byte every 50 ms: each read is well within the read timeout, so only a
    limit on the whole transfer ends it (the old code would take its full length × 50 ms)."""
    manifest, blobs, _ = oci_parts(artifact_a)
    with Hostile() as hostile:
        serve_registry(hostile, REPO, manifest, blobs)
        hostile.route(f"/v2/{REPO}/manifests/candidate", lambda ex: ex.drip(manifest, 0.05))
        started = time.monotonic()
        with (
            HttpStore(hostile.origin, REPO, timeout=5.0, deadline=1.0) as store,
            pytest.raises(RegistryError, match=r"did not finish within 1(\.0)? s") as info,
        ):
            pull_artifact(store, "candidate", tmp_path / "pulled")
        took = time.monotonic() - started
    assert took < 4.0, f"took {took:.1f}s"
    assert info.value.exit_code == 1 and not (tmp_path / "pulled").exists()


def test_headers_that_never_end_are_stopped_by_the_total_time_limit() -> None:
    """A status line, then one header byte every 100 ms, forever: httpx's read timeout never fires."""
    with stalled_headers(0.1) as origin:
        started = time.monotonic()
        with (
            HttpStore(origin, REPO, timeout=5.0, deadline=1.0) as store,
            pytest.raises(RegistryError, match=r"did not finish within 1(\.0)? s"),
        ):
            store.tags()
        took = time.monotonic() - started
    assert took < 4.0, f"took {took:.1f}s"
