"""The distribution-API store against real registries: unreachable, slow, authenticated, refusing."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlci.errors import RegistryError
from mlci.registry import HttpStore, open_store, pull_artifact, push_artifact, tag_digest
from mlci.registry.http import parse_challenge
from mlci.registry.store import OCI_MANIFEST, digest_bytes
from tests.registry.conftest import PASSWORD, USERNAME, Registry
from tests.registry.token_service import TokenService

SECRETS = (PASSWORD, base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode())


def test_registry_down_during_push_is_a_clear_error_and_tags_nothing(
    start_registry: Callable[[], Registry], artifact_a: Path
) -> None:
    reg = start_registry()
    reg.stop()
    with open_store(reg.url, "mlci/down") as store, pytest.raises(RegistryError) as info:
        push_artifact(store, artifact_a)
    assert info.value.exit_code == 1
    assert f"Cannot reach the registry at {reg.url}" in str(info.value)
    assert "Check [registry] url" in str(info.value)
    reg.start()  # same storage and port: the failed push left no tag behind
    with HttpStore(reg.url, "mlci/down") as store:
        assert store.tags() == []


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_registry_that_never_answers_times_out_with_a_clear_error(silent_server: str) -> None:
    expected = rf"Cannot reach the registry at {re.escape(silent_server)}: .*timed out"
    with (
        HttpStore(silent_server, "mlci/slow", timeout=0.3) as store,
        pytest.raises(RegistryError, match=expected),
    ):
        store.tags()


def test_anonymous_access_to_an_auth_registry_says_which_env_vars_to_set(auth_registry: Registry) -> None:
    expected = r"401.*set MLCI_REGISTRY_USERNAME and MLCI_REGISTRY_PASSWORD"
    with (
        HttpStore(auth_registry.url, "mlci/private") as store,
        pytest.raises(RegistryError, match=expected) as info,
    ):
        store.tags()
    assert info.value.exit_code == 1


def test_wrong_password_is_refused_without_echoing_it(auth_registry: Registry) -> None:
    wrong = "wrong-" + PASSWORD
    with (
        HttpStore(auth_registry.url, "mlci/private", USERNAME, wrong) as store,
        pytest.raises(RegistryError) as info,
    ):
        store.tags()
    assert "answered 401" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)


def test_credentials_work_and_never_reach_repr_errors_or_logs(
    auth_registry: Registry, artifact_a: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = open_store(auth_registry.url, "mlci/private", username=USERNAME, password=PASSWORD)
    try:
        result = push_artifact(store, artifact_a)
        assert pull_artifact(store, "candidate", tmp_path / "pulled")["digest"] == result.artifact_digest
        with pytest.raises(RegistryError) as info:
            pull_artifact(store, "no-such-tag", tmp_path / "missing")
        shown = [repr(store), str(store), str(info.value), repr(info.value), caplog.text]
        shown += [str(vars(store))]
    finally:
        store.close()
    assert caplog.records, "expected httpx to log the requests at DEBUG"
    for text in shown:
        for secret in SECRETS:
            assert secret not in text
    assert USERNAME not in repr(store)


def test_a_manifest_naming_missing_blobs_is_refused_with_the_registry_reason(registry: Registry) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": digest_bytes(b"{}"),
            "size": 2,
        },
        "layers": [{"mediaType": "application/octet-stream", "digest": "sha256:" + "a" * 64, "size": 1}],
    }
    with HttpStore(registry.url, "mlci/broken") as store:
        with pytest.raises(RegistryError, match=r"answered 400 to PUT .*BLOB_UNKNOWN"):
            store.put_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "candidate")
        assert store.get_manifest("candidate") is None and store.tags() == []


def test_blob_put_checks_the_digest_before_sending(registry: Registry) -> None:
    with HttpStore(registry.url, "mlci/blobs") as store:
        with pytest.raises(RegistryError, match="hash to"):
            store.put_blob(b"data", digest_bytes(b"other"))
        assert not store.has_blob(digest_bytes(b"data"))
        store.put_blob(b"data", digest_bytes(b"data"))
        assert store.has_blob(digest_bytes(b"data"))
        assert store.get_blob(digest_bytes(b"data")) == b"data"


def test_parse_challenge() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"'
    assert parse_challenge(header) == (
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:a/b:pull,push",
        },
    )
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


class TokenRegistry:
    """A registry + token service in the shape of GHCR/Docker Hub, as an httpx transport (no network)."""

    def __init__(self) -> None:
        self.token_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            if request.headers.get("authorization") != expected:
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            return httpx.Response(200, json={"token": "tok-" + request.url.params["scope"]})
        scope = "repository:acme/model:pull"
        if request.headers.get("authorization") != f"Bearer tok-{scope}":
            challenge = (
                f'Bearer realm="https://auth.example/token",service="registry.example",scope="{scope}"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json={"errors": []})
        return httpx.Response(200, json={"name": "acme/model", "tags": ["production", "candidate"]})


def test_bearer_token_flow() -> None:
    fake = TokenRegistry()
    transport = httpx.MockTransport(fake)
    with HttpStore(
        "https://registry.example", "acme/model", USERNAME, PASSWORD, transport=transport
    ) as store:
        assert store.tags() == ["candidate", "production"]
        assert store.tags() == ["candidate", "production"]  # the token is reused
    assert len(fake.token_requests) == 1
    params = fake.token_requests[0].url.params
    assert (params["service"], params["scope"]) == ("registry.example", "repository:acme/model:pull")

    wrong = "wrong-pw-7f3a"
    expected = re.escape("token service https://auth.example/token answered 401")
    store = HttpStore("https://registry.example", "acme/model", USERNAME, wrong, transport=transport)
    with store, pytest.raises(RegistryError, match=expected) as info:
        store.tags()
    assert wrong not in str(info.value) and wrong not in repr(store)


def test_tag_digest_on_an_auth_registry(auth_registry: Registry, artifact_a: Path) -> None:
    with HttpStore(auth_registry.url, "mlci/tagged", USERNAME, PASSWORD) as store:
        result = push_artifact(store, artifact_a, tags=("production",))
        assert tag_digest(store, "production") == result.artifact_digest


def test_bearer_token_flow_against_a_real_token_registry(
    token_registry: tuple[Registry, TokenService],
    artifact_a: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, tokens = token_registry
    caplog.set_level(logging.DEBUG)
    with (
        HttpStore(reg.url, "acme/model") as anonymous,
        pytest.raises(RegistryError, match="token service") as info,
    ):
        anonymous.tags()
    assert info.value.exit_code == 1
    with HttpStore(reg.url, "acme/model", USERNAME, PASSWORD) as store:
        result = push_artifact(store, artifact_a, tags=("candidate", "production"))
        assert pull_artifact(store, "production", tmp_path / "pulled")["digest"] == result.artifact_digest
        assert store.tags() == sorted(result.tags)
        shown = [repr(store), caplog.text]
    scopes = {scope for query in tokens.requests for scope in query.get("scope", [])}
    granted = {(s.rsplit(":", 1)[0], frozenset(s.rsplit(":", 1)[1].split(","))) for s in scopes}
    assert (
        "repository:acme/model",
        frozenset({"pull", "push"}),
    ) in granted  # the registry orders actions freely
    assert all(query.get("service") == ["mlci-test-registry"] for query in tokens.requests)
    assert len(tokens.requests) <= 4, "the token should be reused, not fetched for every request"
    for text in shown:
        for secret in SECRETS:
            assert secret not in text


def test_registry_dying_mid_push_leaves_the_old_tags(
    start_registry: Callable[[], Registry], artifact_a: Path, artifact_b: Path, tmp_path: Path
) -> None:
    reg = start_registry()
    with HttpStore(reg.url, "mlci/dying") as store:
        old = push_artifact(store, artifact_a, tags=("candidate", "production"))

        def die(event: str) -> None:
            if event == "blobs":
                reg.stop()

        with pytest.raises(RegistryError, match=re.escape(f"Cannot reach the registry at {reg.url}")) as info:
            push_artifact(store, artifact_b, tags=("candidate", "production"), on_progress=die)
        assert info.value.exit_code == 1
    reg.start()
    with HttpStore(reg.url, "mlci/dying") as store:
        assert tag_digest(store, "candidate") == tag_digest(store, "production") == old.artifact_digest
        assert pull_artifact(store, "production", tmp_path / "prod")["digest"] == old.artifact_digest
