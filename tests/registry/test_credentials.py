"""Registry credentials go to the registry's own origin, and to a token realm only over https.

Attacks reproduced with hostile servers on 127.0.0.1: a tag-list page link to another port, a blob
redirect whose target asks for credentials, and an https registry whose Bearer challenge names a plain
http realm. Each "other" server records the Authorization headers that reached it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mlci.errors import RegistryError
from mlci.registry import HttpStore
from mlci.registry.http import credentials_allowed
from tests.registry.conftest import PASSWORD, USERNAME
from tests.registry.hostile import Exchange, Hostile, self_signed_tls

REPO = "acme/model"
BASIC = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
TAGS = f"/v2/{REPO}/tags/list"


def authorizations(server: Hostile) -> list[str]:
    return [r.headers["authorization"] for r in server.requests if "authorization" in r.headers]


def guarded(scheme: str, realm: str, answer: Callable[[Exchange], None]) -> Callable[[Exchange], None]:
    """A handler that challenges until it sees the right credentials (Basic, or the token from ``realm``)."""
    expected = BASIC if scheme == "basic" else "Bearer tok-1"
    challenge = 'Basic realm="hostile"' if scheme == "basic" else f'Bearer realm="{realm}",service="hostile",scope="repository:{REPO}:pull"'

    def handle(ex: Exchange) -> None:
        if ex.seen.headers.get("authorization") != expected:
            ex.json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        else:
            answer(ex)

    return handle


def token_service(ex: Exchange) -> None:
    if ex.seen.headers.get("authorization") == BASIC:
        ex.json(200, {"token": "tok-1"})
    else:
        ex.json(401, {"errors": [{"code": "UNAUTHORIZED"}]})


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_a_tag_page_on_another_origin_never_gets_the_credentials(scheme: str) -> None:
    """The registry's Link points at another port: the old code sent the Authorization header (the
    base64 of user:password, or the bearer token) there and merged its tags in."""
    with Hostile() as registry, Hostile() as other:
        other.route(TAGS, lambda ex: ex.json(200, {"name": REPO, "tags": ["planted"]}))
        link = {"Link": f'<{other.origin}{TAGS}?n=1000&last=a>; rel="next"'}
        registry.route("/token", token_service)
        registry.route(TAGS, guarded(scheme, f"{registry.origin}/token", lambda ex: ex.json(200, {"tags": ["a"]}, link)))
        with (
            HttpStore(registry.origin, REPO, USERNAME, PASSWORD) as store,
            pytest.raises(RegistryError, match="another origin") as info,
        ):
            store.tags()
        assert authorizations(other) == [], "credentials reached the other origin"
        assert other.requests == []
    assert other.origin in str(info.value) and PASSWORD not in str(info.value)


def test_a_redirect_target_cannot_ask_for_the_credentials() -> None:
    """A blob redirects to another origin (as GHCR and ECR do, to object storage), which answers with
    its own Bearer challenge: the old code sent the Basic credentials to that origin's realm."""
    digest = "sha256:" + "a" * 64
    with Hostile() as registry, Hostile() as other:
        other.route("/token", token_service)
        other.route(
            "/blob",
            lambda ex: ex.json(401, {}, {"WWW-Authenticate": f'Bearer realm="{other.origin}/token",service="s3"'}),
        )
        registry.route(
            f"/v2/{REPO}/blobs/{digest}",
            guarded("basic", "", lambda ex: ex.answer(307, b"", {"Location": f"{other.origin}/blob"})),
        )
        registry.route(TAGS, guarded("basic", "", lambda ex: ex.json(200, {"tags": ["a"]})))
        with HttpStore(registry.origin, REPO, USERNAME, PASSWORD) as store:
            assert store.tags() == ["a"]  # the store now sends Basic credentials up front
            with pytest.raises(RegistryError) as info:
                store.get_blob(digest)
        assert authorizations(other) == [], "credentials reached the redirect target"
        assert other.seen("/token") == []
    assert "401" in str(info.value)


def test_an_https_registry_cannot_send_the_credentials_to_a_plain_http_realm(tmp_path: Path) -> None:
    """A real TLS registry on 127.0.0.1 whose Bearer challenge names an http:// realm: the old code sent
    Basic credentials to it in clear text."""
    tls = self_signed_tls(tmp_path)
    with Hostile(tls=tls.server) as registry, Hostile() as realm:
        realm.route("/token", token_service)
        registry.route(TAGS, guarded("bearer", f"{realm.origin}/token", lambda ex: ex.json(200, {"tags": ["a"]})))
        transport = httpx.HTTPTransport(verify=tls.client)
        with (
            HttpStore(registry.origin, REPO, USERNAME, PASSWORD, transport=transport) as store,
            pytest.raises(RegistryError, match="plain http") as info,
        ):
            store.tags()
        assert authorizations(realm) == [] and realm.requests == []
        message = str(info.value)
        assert f"{realm.origin}/token" in message and "insecure = true" in message
        # The same registry with `insecure = true`: the user said clear text is fine, so the flow completes.
        with HttpStore(registry.origin, REPO, USERNAME, PASSWORD, insecure=True, transport=httpx.HTTPTransport(verify=tls.client)) as store:
            assert store.tags() == ["a"]
        assert authorizations(realm) == [BASIC]


@pytest.mark.parametrize(
    ("registry", "realm", "insecure", "allowed"),
    [
        ("https://ghcr.io", "https://ghcr.io/token", False, True),
        ("https://registry-1.docker.io", "https://auth.docker.io/token", False, True),
        ("https://ghcr.io", "http://ghcr.io/token", False, False),  # the same host, but in clear text
        ("https://ghcr.io", "http://127.0.0.1:5001/token", False, False),
        ("https://ghcr.io", "http://evil.example/token", True, True),  # insecure: the user accepted clear text
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token", False, True),  # never leaves the machine
        ("http://localhost:5000", "http://localhost/token", False, True),
        ("http://127.0.0.1:5000", "http://evil.example/token", False, False),
        ("http://registry.lan:5000", "http://registry.lan:5001/token", False, False),
        ("http://registry.lan:5000", "http://registry.lan:5001/token", True, True),
        ("https://ghcr.io", "ftp://ghcr.io/token", True, False),
    ],
)
def test_which_realms_may_receive_the_credentials(registry: str, realm: str, insecure: bool, allowed: bool) -> None:
    assert credentials_allowed(httpx.URL(realm), httpx.URL(registry), insecure) is allowed
