"""The store contract's shared checks: digests, tags, blob verification; both stores satisfy the protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlci.errors import ConfigError, RegistryError
from mlci.registry import HttpStore, LayoutStore, Store
from mlci.registry.store import check_digest, check_tag, digest_bytes, is_digest, verify_blob


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(LayoutStore(tmp_path), Store)
    with HttpStore("http://127.0.0.1:1", "x") as store:
        assert isinstance(store, Store)


def test_digests() -> None:
    good = digest_bytes(b"abc")
    assert good == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert is_digest(good) and check_digest(good) == good
    for bad in ("sha256:ABC", "sha512:" + "a" * 128, "sha256:" + "a" * 63, "candidate"):
        assert not is_digest(bad)
        with pytest.raises(RegistryError, match="Expected a digest of the form"):
            check_digest(bad)


@pytest.mark.parametrize("tag", ["candidate", "v1.2.3", "sha256-" + "a" * 64, "A_b-c", "x"])
def test_good_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "-x", "x-", ".hidden", "a/b", "a:b", "x" * 129, "sha256:" + "a" * 64])
def test_bad_tags(tag: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid tag") as info:
        check_tag(tag)
    assert info.value.exit_code == 2


def test_verify_blob_names_both_digests_and_the_fix() -> None:
    assert verify_blob(b"abc", digest_bytes(b"abc"), "here") == b"abc"
    with pytest.raises(RegistryError) as info:
        verify_blob(b"abd", digest_bytes(b"abc"), "'/some/file'")
    message = str(info.value)
    assert digest_bytes(b"abc") in message and digest_bytes(b"abd") in message
    assert "'/some/file'" in message and "re-push the artifact" in message
