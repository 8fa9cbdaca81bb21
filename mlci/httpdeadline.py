"""A wall-clock limit on an httpx exchange, shared by the registry client and the monitor's webhook.

httpx bounds each connect, read and write (``timeout``) but not their sum: a server that answers a byte
at a time, in its headers or its body, would hold the caller forever. :class:`SocketDeadline` records
every socket the exchange opens (httpcore's ``trace`` request extension) and, when the time is up, shuts
them down, which wakes a blocked connect, send or read at once with a transport error; the caller then
checks :attr:`SocketDeadline.expired` to report it as the deadline rather than as a network failure.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["SocketDeadline"]


class SocketDeadline:
    """Cuts the connections an httpx client opens when a block runs past its limit (see :meth:`armed`).

    Pass :meth:`trace` as the request's ``trace`` extension; one instance may serve many requests and
    many armed blocks in turn (the registry client keeps one for its connection pool).
    """

    def __init__(self) -> None:
        self.expired = False
        self._armed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember every socket a connection opens (TCP, then TLS on top)."""
        stream = info.get("return_value")
        sock = getattr(stream, "get_extra_info", lambda _name: None)("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets = [s for s in self._sockets if s is not sock and s.fileno() != -1] + [sock]
                if self._armed and self.expired:  # opened just as the time ran out
                    _shutdown(sock)

    @contextlib.contextmanager
    def armed(self, seconds: float) -> Iterator[SocketDeadline]:
        """Cut the recorded connections if the block is still running after ``seconds``."""
        with self._lock:
            self.expired = False
            self._armed = True
        timer = threading.Timer(seconds, self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield self
        finally:
            timer.cancel()
            with self._lock:
                self._armed = False

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
