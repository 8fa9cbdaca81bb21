"""A store that speaks the OCI distribution API (any registry: distribution, GHCR, ECR, Docker Hub, Harbor).

Auth follows the registry's ``WWW-Authenticate`` challenge: Basic, or the Bearer token flow (ask the
``realm`` for a token for ``service`` and ``scope``, with Basic credentials when given). Credentials
live only inside the auth object; they are never part of a URL, a repr or an error message, and they
go only to the registry's own origin and to an https token realm (plain http only where the registry
itself is on this machine, or with ``insecure``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from typing import Any

import httpx

from mlci.errors import RegistryError
from mlci.registry.store import (
    MANIFEST_MEDIA_TYPES,
    check_digest,
    check_tag,
    digest_bytes,
    is_digest,
    verify_blob,
)

__all__ = ["HttpStore", "LOOPBACK_HOSTS", "credentials_allowed", "is_loopback", "parse_challenge", "same_origin"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine's loopback."""
    return host.strip("[]").lower() in LOOPBACK_HOSTS


def same_origin(url: httpx.URL, other: httpx.URL) -> bool:
    """Same scheme, host and port (the default port spelled out or not)."""
    return (
        url.scheme == other.scheme
        and url.host == other.host
        and (url.port or _DEFAULT_PORTS.get(url.scheme)) == (other.port or _DEFAULT_PORTS.get(other.scheme))
    )


def credentials_allowed(realm: httpx.URL, registry: httpx.URL, insecure: bool) -> bool:
    """Whether a Bearer ``realm`` named by ``registry`` may receive the Basic credentials.

    Over https, yes (GHCR's and Docker Hub's realms are other hosts). Over plain http only when nothing
    leaves the machine (a registry and realm both on loopback, as in a local test setup), or when the
    user said clear text is fine with ``insecure``. Any other scheme, never.
    """
    if realm.scheme == "https":
        return True
    if realm.scheme != "http":
        return False
    return insecure or (registry.scheme == "http" and is_loopback(registry.host) and is_loopback(realm.host))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {m[1].lower(): m[2] or m[3] for m in _PARAM.finditer(rest)}


class _RegistryAuth(httpx.Auth):
    """Answers the registry's own 401 challenges; keeps the last bearer token for later requests.

    Credentials are added only to requests for the registry's origin, and only a 401 from that origin
    is answered: a page link or a redirect to another host (object storage) gets neither the credentials
    nor the chance to ask for them.
    """

    requires_response_body = True

    def __init__(self, username: str | None, password: str | None, origin: httpx.URL, insecure: bool) -> None:
        self._basic = (
            httpx.BasicAuth(username, password) if username is not None and password is not None else None
        )
        self._origin = origin
        self._insecure = insecure
        self._token: str | None = None
        self._use_basic = False

    def __repr__(self) -> str:
        return "<registry auth>"

    def _apply(self, request: httpx.Request) -> httpx.Request:
        if not same_origin(request.url, self._origin):
            return request
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token}"
        elif self._use_basic and self._basic is not None:
            request = next(self._basic.auth_flow(request))
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield self._apply(request)
        if response.status_code != 401 or not same_origin(response.url, self._origin):
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme == "basic" and self._basic is not None and not self._use_basic:
            self._use_basic = True
        elif scheme == "bearer" and "realm" in params:
            query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
            try:
                token_request = httpx.Request("GET", params["realm"], params=query)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
                raise RegistryError(
                    f"The registry at {self._origin} named a token service that is not a URL "
                    f"({params['realm']!r}: {exc})."
                ) from exc
            if self._basic is not None and not credentials_allowed(token_request.url, self._origin, self._insecure):
                raise RegistryError(
                    f"The registry at {self._origin} asks for the credentials to be sent to the token service "
                    f"{params['realm']}, which is plain http (or not http at all): they would cross the network "
                    "in clear text, so mlci did not send them. A real registry's token service is https; if this "
                    "one is really meant to run without TLS, set [registry] insecure = true."
                )
            if self._basic is not None:
                token_request = next(self._basic.auth_flow(token_request))
            token_response = yield token_request
            if token_response.status_code != 200:
                raise RegistryError(
                    f"The token service {params['realm']} answered {token_response.status_code} for scope "
                    f"{params.get('scope', '(none)')!r}. Check MLCI_REGISTRY_USERNAME and MLCI_REGISTRY_PASSWORD "
                    "(for GHCR a token with write:packages, for ECR the output of `aws ecr get-login-password`)."
                )
            try:
                body = token_response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            if not isinstance(body, dict):
                raise RegistryError(f"The token service {params['realm']} answered something other than a JSON object.")
            token = body.get("token") or body.get("access_token")
            if not isinstance(token, str) or not token:
                raise RegistryError(f"The token service {params['realm']} answered without a token.")
            self._token = token
        else:
            return
        yield self._apply(request)


class HttpStore:
    """One repository on a registry that speaks the OCI distribution API."""

    def __init__(
        self,
        base_url: str,
        repository: str,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.repository = repository
        self._origin = httpx.URL(self.base_url)
        self._has_credentials = username is not None and password is not None
        self._client = httpx.Client(
            auth=_RegistryAuth(username, password, self._origin, insecure),
            verify=not insecure,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,  # blob downloads often redirect to object storage (GHCR, ECR)
        )

    def __repr__(self) -> str:
        auth = "with credentials" if self._has_credentials else "anonymous"
        return f"HttpStore({self.base_url!r}, {self.repository!r}, {auth})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> HttpStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def _request(
        self, method: str, url: str | httpx.URL, expect: tuple[int, ...], **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise RegistryError(
                f"Cannot reach the registry at {self.base_url}: {reason}. Is it running? Check [registry] url."
            ) from exc
        if response.status_code in expect:
            return response
        raise RegistryError(self._refusal(method, response))

    def _refusal(self, method: str, response: httpx.Response) -> str:
        where = (
            f"The registry at {self.base_url} answered {response.status_code} to {method} {response.url.path}"
            if same_origin(response.url, self._origin)
            else f"The registry at {self.base_url} redirected {method} to {response.url.scheme}://"
            f"{response.url.netloc.decode()}{response.url.path}, which answered {response.status_code}"
        )
        if response.status_code == 401:
            fix = (
                "Check MLCI_REGISTRY_USERNAME and MLCI_REGISTRY_PASSWORD."
                if self._has_credentials
                else "It needs credentials: set MLCI_REGISTRY_USERNAME and MLCI_REGISTRY_PASSWORD."
            )
            return f"{where} (unauthorized). {fix}"
        if response.status_code == 403:
            return f"{where} (denied): the credentials lack access to '{self.repository}'."
        try:
            errors = response.json().get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            detail = response.text[:200]
        return f"{where}: {detail or response.reason_phrase}."

    # -- Store --------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: 200 yes, 404 no."""
        response = self._request("HEAD", self._url(f"blobs/{check_digest(digest)}"), (200, 404))
        return response.status_code == 200

    def put_blob(self, data: bytes, digest: str) -> None:
        """Monolithic upload: POST for an upload session, then PUT the bytes with ``?digest=``."""
        actual = digest_bytes(data)
        if actual != check_digest(digest):
            raise RegistryError(f"Refusing to upload a blob as {digest}: its bytes hash to {actual}.")
        started = self._request("POST", self._url("blobs/uploads/"), (202,))
        location = started.headers.get("location")
        if not location:
            raise RegistryError(
                f"The registry at {self.base_url} started an upload without a Location header."
            )
        target = httpx.URL(self.base_url).join(location).copy_merge_params({"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        self._request("PUT", target, (201, 204), content=data, headers=headers)

    def get_blob(self, digest: str) -> bytes:
        """GET the blob (following redirects) and verify it."""
        response = self._request("GET", self._url(f"blobs/{check_digest(digest)}"), (200, 404))
        if response.status_code == 404:
            raise RegistryError(
                f"Blob {digest} is missing from {self.base_url}/{self.repository}. "
                "The registry's storage is corrupted; re-push the artifact."
            )
        return verify_blob(response.content, digest, f"{self.base_url}/{self.repository}")

    def put_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        """PUT the manifest under a tag or its digest; return the digest."""
        digest = digest_bytes(data)
        if is_digest(ref) and ref != digest:
            raise RegistryError(f"Cannot store a manifest as {ref}: its bytes hash to {digest}.")
        reference = ref if is_digest(ref) else check_tag(ref)
        response = self._request(
            "PUT",
            self._url(f"manifests/{reference}"),
            (201, 200),
            content=data,
            headers={"Content-Type": media_type},
        )
        claimed = response.headers.get("docker-content-digest")
        if claimed and claimed != digest:
            raise RegistryError(
                f"The registry stored the manifest as {claimed}, but its bytes hash to {digest}."
            )
        return digest

    def get_manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        """GET the manifest by tag or digest; None on 404; the bytes are verified against the digest."""
        reference = ref if is_digest(ref) else check_tag(ref)
        response = self._request(
            "GET",
            self._url(f"manifests/{reference}"),
            (200, 404),
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        )
        if response.status_code == 404:
            return None
        data = response.content
        expected = ref if is_digest(ref) else response.headers.get("docker-content-digest")
        if expected:  # by tag, the registry's Docker-Content-Digest says what the bytes should hash to
            verify_blob(data, expected, f"{self.base_url}/{self.repository}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return data, media_type, digest_bytes(data)

    def tags(self) -> list[str]:
        """Every tag (following ``Link: rel=next`` pages on this registry); [] for a repository not created yet."""
        found: list[str] = []
        url: str | httpx.URL = self._url("tags/list?n=1000")
        while True:
            response = self._request("GET", url, (200, 404))
            if response.status_code == 404:
                return []
            found.extend(response.json().get("tags") or [])
            link = _NEXT.search(response.headers.get("link", ""))
            if link is None:
                return sorted(set(found))
            url = self._next_page(link[1])

    def _next_page(self, link: str) -> httpx.URL:
        """Where the ``rel=next`` link leads, which must be the registry's own origin."""
        try:
            target = self._origin.join(link)
        except httpx.InvalidURL as exc:
            raise RegistryError(f"The registry at {self.base_url} sent a tag-list link that is no URL: {link!r}.") from exc
        if not same_origin(target, self._origin):
            shown = f"{target.scheme}://{target.netloc.decode()}"
            raise RegistryError(
                f"The registry at {self.base_url} links its next tag-list page to another origin ({shown}); "
                "mlci follows links only within the registry, which alone gets its credentials. Refusing it."
            )
        return target
