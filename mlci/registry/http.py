"""A store that speaks the OCI distribution API (any registry: distribution, GHCR, ECR, Docker Hub, Harbor).

Auth follows the registry's ``WWW-Authenticate`` challenge: Basic, or the Bearer token flow (ask the
``realm`` for a token for ``service`` and ``scope``, with Basic credentials when given). Credentials
live only inside the auth object; they are never part of a URL, a repr or an error message, and they
go only to the registry's own origin and to an https token realm (plain http only where the registry
itself is on this machine, or with ``insecure``).

Nothing a registry answers is trusted to be small or quick: every body is read with a limit (a blob's
declared size, MAX_MANIFEST_BYTES, MAX_TAG_PAGE_BYTES, MAX_REPLY_BYTES for the rest), tag-list pages stop
at MAX_TAG_PAGES or on a loop, and each operation has a total time limit on top of httpx's per-read one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from mlci.canonical import sha256_file
from mlci.errors import RegistryError
from mlci.httpdeadline import SocketDeadline
from mlci.registry.store import (
    DECLARED,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MAX_SMALL_BLOB_BYTES,
    SERVES_OTHER,
    check_digest,
    check_tag,
    copy_verified,
    digest_bytes,
    file_chunks,
    is_digest,
    read_capped,
    too_large,
    verify_blob,
)

__all__ = [
    "HttpStore",
    "LOOPBACK_HOSTS",
    "MAX_REPLY_BYTES",
    "MAX_TAG_PAGES",
    "MAX_TAG_PAGE_BYTES",
    "MIN_TRANSFER_BYTES_PER_S",
    "OPERATION_DEADLINE_S",
    "credentials_allowed",
    "is_loopback",
    "parse_challenge",
    "same_origin",
]

# A page of 1000 tags of at most 128 characters is ~140 KiB; 1000 such pages are a million tags.
MAX_TAG_PAGES = 1000
MAX_TAG_PAGE_BYTES = 4 << 20
# Errors, redirects and token answers: what httpx reads whole on its own (auth and redirect handling).
MAX_REPLY_BYTES = 1 << 20
# One operation (a manifest, a tag listing, a blob) may take this long in total, plus the time its
# blob needs at this slowest acceptable rate; httpx's ``timeout`` bounds each read on top of that.
OPERATION_DEADLINE_S = 120.0
MIN_TRANSFER_BYTES_PER_S = 1 << 20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_BODY_LIMIT = "mlci.body_limit"  # request extension: the most a 2xx answer may carry (None: the caller caps it)
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
    nor the chance to ask for them. Answers are not read for the flow (``requires_response_body`` off):
    a blob's body is the caller's to stream; the flow reads only the token service's small answer.
    """

    requires_response_body = False

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
            token_response.read()  # capped at MAX_REPLY_BYTES (HttpStore._on_response)
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


class _CappedStream(httpx.SyncByteStream):
    """A response body that raises once it passes ``limit`` bytes (it is read by httpx itself, or by us)."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int, response: httpx.Response) -> None:
        self._inner, self._limit, self._response = inner, limit, response

    def _refuse(self, got: str) -> RegistryError:
        request = self._response.request
        return too_large(
            f"The answer to {request.method} {request.url.path}",
            f"{request.url.scheme}://{request.url.netloc.decode()}",
            self._limit,
            "mlci's limit for an error, redirect or token answer, MAX_REPLY_BYTES",
            got,
            "That is no registry answer; check [registry] url.",
        )

    def __iter__(self) -> Iterator[bytes]:
        declared = self._response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise self._refuse(f"it announced {int(declared):,}")
        count = 0
        for chunk in self._inner:
            count += len(chunk)
            if count > self._limit:
                raise self._refuse(f"stopped reading after {count:,}")
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _FileContent:
    """An upload body read from disk piece by piece; iterable again if the request must be re-sent (auth)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        return file_chunks(self.path)


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
        deadline: float = OPERATION_DEADLINE_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.repository = repository
        self._origin = httpx.URL(self.base_url)
        self._deadline = deadline
        self._has_credentials = username is not None and password is not None
        self._watchdog = SocketDeadline()  # cuts a stalled operation's connections
        self._client = httpx.Client(
            auth=_RegistryAuth(username, password, self._origin, insecure),
            verify=not insecure,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,  # blob downloads often redirect to object storage (GHCR, ECR)
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
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
    @property
    def _where(self) -> str:
        return f"{self.base_url}/{self.repository}"

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def _on_request(self, request: httpx.Request) -> None:
        """Every request, ours or httpx's own (auth, redirects): its connection is watched."""
        request.extensions["trace"] = self._watchdog.trace

    def _on_response(self, response: httpx.Response) -> None:
        """Every answer's body is capped: a 2xx at its request's limit, anything else at MAX_REPLY_BYTES."""
        limit = response.request.extensions.get(_BODY_LIMIT, MAX_REPLY_BYTES) if response.is_success else MAX_REPLY_BYTES
        if limit is not None:
            response.stream = _CappedStream(response.stream, limit, response)  # type: ignore[arg-type]

    @contextmanager
    def _operation(self, what: str, seconds: float) -> Iterator[None]:
        """One store operation under a total time limit; transport failures become RegistryErrors."""
        with self._watchdog.armed(seconds):
            try:
                yield
            except httpx.TransportError as exc:
                if self._watchdog.expired:
                    raise RegistryError(
                        f"{what} at {self._where} did not finish within {seconds:g} s (mlci's limit for one registry "
                        f"operation: {self._deadline:g} s, plus one second per {MIN_TRANSFER_BYTES_PER_S:,} bytes of "
                        "a blob); the registry is stalled or far too slow. Retry later, or check the network."
                    ) from exc
                reason = str(exc) or type(exc).__name__
                raise RegistryError(
                    f"Cannot reach the registry at {self.base_url}: {reason}. Is it running? Check [registry] url."
                ) from exc

    def _transfer_deadline(self, size: int) -> float:
        return self._deadline + size / MIN_TRANSFER_BYTES_PER_S

    @contextmanager
    def _stream(
        self, method: str, url: str | httpx.URL, expect: tuple[int, ...], limit: int | None = MAX_REPLY_BYTES, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """Send the request and yield the answer unread (its body capped at ``limit``; None: the caller caps it)."""
        request = self._client.build_request(method, url, extensions={_BODY_LIMIT: limit}, **kwargs)
        response = self._client.send(request, stream=True)
        try:
            if response.status_code not in expect:
                response.read()
                raise RegistryError(self._refusal(method, response))
            yield response
        finally:
            response.close()

    def _request(self, method: str, url: str | httpx.URL, expect: tuple[int, ...], **kwargs: Any) -> httpx.Response:
        """Send the request and read its (small) answer."""
        with self._stream(method, url, expect, **kwargs) as response:
            response.read()
            return response

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
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
            detail = response.text[:200]
        return f"{where}: {detail or response.reason_phrase}."

    # -- Store --------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: 200 yes, 404 no."""
        with self._operation(f"Checking blob {digest}", self._deadline):
            response = self._request("HEAD", self._url(f"blobs/{check_digest(digest)}"), (200, 404))
        return response.status_code == 200

    def put_blob(self, data: bytes, digest: str) -> None:
        """Monolithic upload: POST for an upload session, then PUT the bytes with ``?digest=``."""
        actual = digest_bytes(data)
        if actual != check_digest(digest):
            raise RegistryError(f"Refusing to upload a blob as {digest}: its bytes hash to {actual}.")
        self._upload(data, len(data), digest)

    def put_blob_file(self, path: Path, digest: str) -> None:
        """Upload the file as a blob, read from disk piece by piece (hashed first, then streamed)."""
        actual = "sha256:" + sha256_file(path)
        if actual != check_digest(digest):
            raise RegistryError(f"Refusing to upload '{path}' as {digest}: its bytes hash to {actual}.")
        self._upload(_FileContent(path), path.stat().st_size, digest)

    def _upload(self, content: bytes | _FileContent, size: int, digest: str) -> None:
        with self._operation(f"Uploading blob {digest}", self._transfer_deadline(size)):
            started = self._request("POST", self._url("blobs/uploads/"), (202,))
            location = started.headers.get("location")
            if not location:
                raise RegistryError(
                    f"The registry at {self.base_url} started an upload without a Location header."
                )
            target = self._origin.join(location).copy_merge_params({"digest": digest})
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            self._request("PUT", target, (201, 204), content=content, headers=headers)

    def _missing(self, digest: str) -> RegistryError:
        return RegistryError(
            f"Blob {digest} is missing from {self._where}. The registry's storage is corrupted; re-push the artifact."
        )

    def get_blob(self, digest: str, max_size: int = MAX_SMALL_BLOB_BYTES) -> bytes:
        """GET the blob whole (following redirects), at most ``max_size`` bytes, and verify it."""
        with (
            self._operation(f"Downloading blob {digest}", self._transfer_deadline(max_size)),
            self._stream("GET", self._url(f"blobs/{check_digest(digest)}"), (200, 404), limit=None) as response,
        ):
            if response.status_code == 404:
                raise self._missing(digest)
            data = read_capped(
                response.iter_bytes(), max_size, f"Blob {digest}", self._where,
                "the most mlci reads whole for this kind of blob",
                "The registry holds something other than an mlci manifest or document here.",
            )
        return verify_blob(data, digest, self._where)

    def fetch_blob(self, digest: str, size: int, out: BinaryIO) -> None:
        """GET the blob (following redirects) into ``out`` piece by piece: exactly ``size`` bytes, verified."""
        with (
            self._operation(f"Downloading blob {digest}", self._transfer_deadline(size)),
            self._stream("GET", self._url(f"blobs/{check_digest(digest)}"), (200, 404), limit=None) as response,
        ):
            if response.status_code == 404:
                raise self._missing(digest)
            announced = response.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > size:
                raise too_large(f"Blob {digest}", self._where, size, DECLARED, f"it announced {int(announced):,}", SERVES_OTHER)
            copy_verified(response.iter_bytes(), digest, size, out, self._where)

    def put_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        """PUT the manifest under a tag or its digest; return the digest."""
        digest = digest_bytes(data)
        if is_digest(ref) and ref != digest:
            raise RegistryError(f"Cannot store a manifest as {ref}: its bytes hash to {digest}.")
        reference = ref if is_digest(ref) else check_tag(ref)
        with self._operation(f"Storing the manifest {reference}", self._deadline):
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
        """GET the manifest by tag or digest (at most MAX_MANIFEST_BYTES); None on 404; verified against the digest."""
        reference = ref if is_digest(ref) else check_tag(ref)
        accept = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        with (
            self._operation(f"Reading the manifest {reference}", self._deadline),
            self._stream("GET", self._url(f"manifests/{reference}"), (200, 404), limit=None, headers=accept) as response,
        ):
            if response.status_code == 404:
                return None
            data = read_capped(
                response.iter_bytes(), MAX_MANIFEST_BYTES, f"The manifest {reference!r}", self._where,
                "mlci's limit for a manifest, MAX_MANIFEST_BYTES; registries refuse larger ones too",
                "That is no mlci manifest; check the tag and [registry] url.",
            )
        expected = ref if is_digest(ref) else response.headers.get("docker-content-digest")
        if expected:  # by tag, the registry's Docker-Content-Digest says what the bytes should hash to
            verify_blob(data, expected, self._where)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return data, media_type, digest_bytes(data)

    def tags(self) -> list[str]:
        """Every tag (following ``Link: rel=next`` pages on this registry); [] for a repository not created yet."""
        found: list[str] = []
        url = httpx.URL(self._url("tags/list?n=1000"))
        visited: set[str] = set()
        with self._operation("Listing the tags", self._deadline):
            while True:
                if len(visited) >= MAX_TAG_PAGES:
                    raise RegistryError(
                        f"The registry at {self._where} lists its tags over more than {MAX_TAG_PAGES:,} pages "
                        "(mlci's limit, MAX_TAG_PAGES); stopped there. Delete old tags, or check [registry] url."
                    )
                visited.add(str(url))
                page, link = self._tag_page(url)
                if page is None:
                    return []
                found.extend(page)
                if link is None:
                    return sorted(set(found))
                url = self._next_page(url, link, visited)

    def _tag_page(self, url: httpx.URL) -> tuple[list[str] | None, str | None]:
        """The tags on one page (None for 404) and its ``rel=next`` link, if any."""
        with self._stream("GET", url, (200, 404), limit=None) as response:
            if response.status_code == 404:
                return None, None
            data = read_capped(
                response.iter_bytes(), MAX_TAG_PAGE_BYTES, "A tag-list page", self._where,
                "mlci's limit for one page, MAX_TAG_PAGE_BYTES", "Check [registry] url.",
            )
            link = _NEXT.search(response.headers.get("link", ""))
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        tags = body.get("tags") if isinstance(body, dict) else []
        if not isinstance(body, dict) or not isinstance(tags, list | None) or not all(isinstance(t, str) for t in tags or []):
            raise RegistryError(
                f"The registry at {self._where} answered GET {url.path} with something other than a tag list "
                '(expected {"tags": [...]})'
            )
        return list(tags or []), None if link is None else link[1]

    def _next_page(self, url: httpx.URL, link: str, visited: set[str]) -> httpx.URL:
        """Where the ``rel=next`` link leads: on the registry's origin, and not back to a page already read."""
        try:
            target = self._origin.join(link)
        except httpx.InvalidURL as exc:
            raise RegistryError(f"The registry at {self._where} sent a tag-list link that is no URL: {link!r}.") from exc
        if not same_origin(target, self._origin):
            shown = f"{target.scheme}://{target.netloc.decode()}"
            raise RegistryError(
                f"The registry at {self.base_url} links its next tag-list page to another origin ({shown}); "
                "mlci follows links only within the registry, which alone gets its credentials. Refusing it."
            )
        if str(target) in visited:
            raise RegistryError(
                f"The tag-list pages of {self._where} link in a loop (back to {target.path}"
                f"{'?' + target.query.decode() if target.query else ''}); the registry is misbehaving. Stopped there."
            )
        return target
