"""HTTP/1.1 against slow and greedy clients: header and body timeouts and a connection cap, in uvicorn.

Uvicorn 0.54 bounds only the idle time between keep-alive requests (``timeout_keep_alive``, armed when
a response completes and cancelled by the next byte). A client that sends nothing on a new connection,
sends its headers a byte at a time, or declares a body and stops sending is held forever, and each such
connection can buffer up to ``--max-body-bytes``. Its ``limit_concurrency`` answers a plain-text 503 and
compares the *global* number of connections, so once over the limit it refuses requests on every
connection, the established ones too.

:class:`LimitedHttpToolsProtocol` is uvicorn's own ``HttpToolsProtocol`` with one timer slot per
connection, because only the protocol sees a request before its headers are complete: an ASGI
middleware is called after them, so it cannot time headers at all, and timing the body there would wrap
every ``receive()`` (of every request) in ``asyncio.timeout``. The phases and their limits:

* **headers**: from the connection opening, or from the first byte of a later request on it, until the
  headers are complete: ``header_timeout_s``. On expiry the connection is closed, after a JSON 408 if a
  request had begun and no response is half-written (a connection that never sent a byte gets no answer).
  Before that first byte, an idle keep-alive connection is uvicorn's ``timeout_keep_alive``'s.
* **body**: from the headers to the end of the body: ``body_timeout_s``. On expiry the protocol marks
  the request (``scope[BODY_TIMEOUT]``) and wakes the app's pending ``receive()``; the app answers a JSON
  408 naming the setting, with ``Connection: close``. If the app already answered (a 413, a 503), the
  connection is closed: it was only there to swallow the rest of a body nobody will read.
* **connections**: a connection opened while ``max_connections`` are open is not admitted: its request
  gets a JSON 503 from :func:`refusal` and the connection closes. Admission is decided per connection
  (when it opens, and again at each of its requests while refused), so established connections keep being
  served while newcomers are refused.

The hot path stays cheap: a request that arrives in one read (the common case, headers and body) arms no
timer at all; the timers are armed after a read leaves a request incomplete, and cancelled when its
headers or its body are complete. A new connection arms one timer. Per request, the overrides cost three
Python calls (``data_received``, ``on_headers_complete``, ``on_message_complete``) and an integer compare.
"""

from __future__ import annotations

from asyncio import TimerHandle, Transport
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlci.serving.metrics import ServingMetrics
from mlci.serving.settings import Settings

__all__ = ["BODY_TIMEOUT", "LimitedHttpToolsProtocol", "protocol_class", "refusal"]

BODY_TIMEOUT = "mlci.body_timeout"  # scope key: set (True) by the protocol when the body timer expired

# Where a connection's current request is. _IDLE: a new connection, nothing received yet.
_IDLE, _HEAD, _BODY, _DONE = range(4)

ASGIApp = Callable[[Any, Any, Any], Any]


def _json_response(status_line: bytes, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return b"".join(
        [
            status_line,
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with header and body timeouts and per-connection admission.

    Configured through class attributes (:func:`protocol_class` makes a subclass per server), since
    uvicorn builds one instance per connection from the class alone.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024
    on_limit: Callable[[str], None] = staticmethod(lambda limit: None)
    refuse: ASGIApp  # the app that answers a connection beyond max_connections

    _phase: int
    _timer: TimerHandle | None
    _admitted: bool

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = _IDLE
        self._admitted = len(self.connections) <= self.max_connections
        self._timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._phase != _BODY:
            self._phase = _HEAD  # bytes outside a body start (or continue) a request's headers
        super().data_received(data)
        if self._timer is None and self._phase != _DONE and not self.transport.is_closing():
            # This read left a request incomplete: time the rest of its headers, or of its body.
            seconds = self.header_timeout_s if self._phase == _HEAD else self.body_timeout_s
            self._timer = self.loop.call_later(seconds, self._expired)

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = _BODY
        if self._admitted or self._admit():
            super().on_headers_complete()
            return
        self.app = self.refuse  # uvicorn's on_headers_complete hands the request to self.app
        try:
            super().on_headers_complete()
        finally:
            self.app = self.config.loaded_app

    def _admit(self) -> bool:
        self._admitted = len(self.connections) <= self.max_connections
        return self._admitted

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _DONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == _BODY:
            self.on_limit("body_timeout")
            if cycle is None or cycle.response_complete:
                self.transport.close()  # answered already; stop swallowing the rest of the body
                return
            cycle.keep_alive = False  # whatever answer comes, the connection closes after it
            if not cycle.response_started:
                cycle.scope[BODY_TIMEOUT] = True  # type: ignore[literal-required]
                cycle.message_event.set()  # wake the app's receive(): it sees the mark and answers 408
            return
        self.on_limit("header_timeout")
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # an earlier request's answer is still due: close after it
            return
        if self._phase == _HEAD:
            message = (
                f"The request headers did not arrive within {self.header_timeout_s:g} s "
                "(--header-timeout); closing the connection."
            )
            self.transport.write(_json_response(b"HTTP/1.1 408 Request Timeout\r\n", message))
        self.transport.close()


def refusal(settings: Settings, metrics: ServingMetrics) -> ASGIApp:
    """The ASGI app answering a request on a connection beyond ``settings.max_connections``: JSON 503.

    It reads and drops the request's body first (up to ``max_body_bytes``, within the body timeout):
    closing a socket with unread bytes makes the kernel reset the connection, and a client still sending
    could lose the answer.
    """
    body = orjson.dumps(
        {
            "error": f"This server has {settings.max_connections} connections open, its limit "
            "(--max-connections). Retry in a moment, or reuse an open connection."
        }
    )
    start = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ],
    }
    limit = settings.max_body_bytes

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        metrics.limit("max_connections")
        metrics.request("other", 503)
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or scope.get(BODY_TIMEOUT) or size > limit:
                break
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return refuse


def protocol_class(settings: Settings, metrics: ServingMetrics) -> type[LimitedHttpToolsProtocol]:
    """A :class:`LimitedHttpToolsProtocol` subclass with ``settings``' limits, counting in ``metrics``."""
    return type(
        "MlciHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_connections": settings.max_connections,
            "on_limit": staticmethod(metrics.limit),
            "refuse": staticmethod(refusal(settings, metrics)),
        },
    )
