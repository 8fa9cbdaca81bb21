"""A hostile registry for tests: a real HTTP(S) server on 127.0.0.1, in a thread, that answers as told.

Each path gets a handler; every request is recorded (method, path with query, headers) and every body
byte a handler manages to write is counted, so a test can tell what the client sent and how much it read.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Handler = Callable[["Exchange"], None]


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    target: str  # path and query
    headers: dict[str, str]


class Exchange:
    """What a handler gets: the request, and ways to answer it."""

    def __init__(self, server: Hostile, handler: BaseHTTPRequestHandler) -> None:
        self.server = server
        self.handler = handler
        self.seen = server.requests[-1]

    def head(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        self.handler.send_response(status)
        for key, value in (headers or {}).items():
            self.handler.send_header(key, value)
        self.handler.end_headers()

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)
        self.server.add_sent(len(data))

    def answer(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.head(status, {"Content-Length": str(len(body)), **(headers or {})})
        if self.seen.method != "HEAD":
            self.write(body)

    def json(self, status: int, value: Any, headers: Mapping[str, str] | None = None) -> None:
        self.answer(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})

    def stream(self, total: int, *, chunked: bool = True, headers: Mapping[str, str] | None = None) -> None:
        """``total`` bytes, in HTTP/1.1 chunks or declared by Content-Length; stops when the client hangs up."""
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
        self.head(200, {**framing, **(headers or {})})
        block = b"x" * (1 << 16)
        try:
            while total > 0:
                part = block[: min(len(block), total)]
                self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                self.server.add_sent(len(part))
                total -= len(part)
            if chunked:
                self.handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.handler.close_connection = True

    def drip(self, data: bytes, every: float, headers: Mapping[str, str] | None = None) -> None:
        """``data`` one byte at a time, ``every`` seconds apart (declared in full by Content-Length)."""
        self.head(200, {"Content-Length": str(len(data)), **(headers or {})})
        try:
            for i in range(len(data)):
                self.write(data[i : i + 1])
                self.handler.wfile.flush()
                time.sleep(every)
        except OSError:
            self.handler.close_connection = True


@dataclass
class Hostile:
    """The server; ``routes`` maps a path (no query) to its handler; anything else gets 404."""

    tls: ssl.SSLContext | None = None
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def add_sent(self, n: int) -> None:
        with self._lock:
            self.sent += n

    def settled(self, quiet: float = 0.3, limit: float = 10.0) -> int:
        """``sent`` once it has stopped growing for ``quiet`` seconds (the client hung up or read it all)."""
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline and last != self.sent:
            last = self.sent
            time.sleep(quiet)
        return self.sent

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def seen(self, path: str) -> list[Seen]:
        """The requests for ``path`` (query ignored)."""
        return [r for r in self.requests if r.target.split("?", 1)[0] == path]

    def __enter__(self) -> Hostile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in separate writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner.requests.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                handler = owner.routes.get(self.path.split("?", 1)[0])
                exchange = Exchange(owner, self)
                if handler is None:
                    exchange.json(404, {"errors": [{"code": "NOT_FOUND", "message": self.path}]})
                else:
                    handler(exchange)

            do_GET = do_HEAD = do_POST = do_PUT = _any

        return _Handler


def serve_registry(
    hostile: Hostile,
    repository: str,
    manifest: bytes,
    blobs: Mapping[str, bytes],
    tag: str = "candidate",
    overrides: Mapping[str, Handler] | None = None,
) -> None:
    """Route ``hostile`` as a registry holding one manifest under ``tag`` and its blobs; ``overrides`` by digest."""
    import hashlib

    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    media = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": digest}
    for ref in (tag, digest):
        hostile.route(f"/v2/{repository}/manifests/{ref}", lambda ex: ex.answer(200, manifest, media))
    for blob_digest, data in blobs.items():
        hostile.route(f"/v2/{repository}/blobs/{blob_digest}", lambda ex, d=data: ex.answer(200, d))  # type: ignore[misc]
    for blob_digest, handler in (overrides or {}).items():
        hostile.route(f"/v2/{repository}/blobs/{blob_digest}", handler)


@dataclass(frozen=True)
class SelfSignedTls:
    """A certificate for 127.0.0.1: the server's context, and a client context that trusts it (only it)."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def self_signed_tls(root: Path) -> SelfSignedTls:
    """Make a key and a self-signed certificate for 127.0.0.1 under ``root``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = root / "tls.crt", root / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return SelfSignedTls(server, client)


@contextmanager
def stalled_headers(every: float) -> Iterator[str]:
    """A raw TCP server that sends a status line, then one header byte every ``every`` seconds, forever.

    Yields its origin. httpx's per-read timeout never fires on it: every read gets a byte in time.
    """
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.is_set():
                    conn.sendall(b"a")
                    time.sleep(every)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()
