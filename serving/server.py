"""Run the app under uvicorn (uvloop + httptools) until SIGTERM/SIGINT.

On SIGTERM uvicorn stops accepting connections, closes idle keep-alive connections, lets in-flight requests
finish (up to ``graceful_timeout_s``), then runs the app's lifespan shutdown, which flushes the
prediction log. Why this stack: uvicorn with httptools and uvloop is the fastest well-kept ASGI server
for CPython; starlette adds routing and error mapping for a few microseconds a request.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import uvicorn

from mlci.errors import CheckFailed, ConfigError
from mlci.model.artifact import verify_artifact
from mlci.serving.app import create_app
from mlci.serving.settings import Settings

__all__ = ["build_server", "serve"]


def build_server(settings: Settings, app: Any = None) -> uvicorn.Server:
    """A configured ``uvicorn.Server`` for ``settings`` (the app is built from the artifact unless given)."""
    app = app if app is not None else create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    server = uvicorn.Server(config)
    state = app.state.mlci

    def _stop(message: str) -> None:
        server.should_exit = True

    state.on_load_error = _stop
    return server


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Verify the artifact (refuse a tampered one before binding), then serve until told to stop."""
    if settings.artifact is None:
        raise ConfigError("No artifact to serve: pass ARTIFACT to `mlci serve` or set MLCI_SERVE_ARTIFACT.")
    verify_artifact(settings.artifact)
    if settings.log_dir is not None:
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"Cannot create the prediction log directory '{settings.log_dir}': {exc}. Pick another --log-dir."
            ) from exc
        if not os.access(settings.log_dir, os.W_OK):
            raise ConfigError(
                f"The prediction log directory '{settings.log_dir}' is not writable. Pick another --log-dir."
            )
    app = create_app(settings)
    server = build_server(settings, app)
    server.run(sockets=sockets)
    state = app.state.mlci
    if state.load_error:
        raise CheckFailed(f"The model could not be served: {state.load_error}")
    if not server.started:
        raise ConfigError(
            f"The server did not start on {settings.host}:{settings.port}; the reason is in the log above "
            "(most often the port is in use: pick another --port)."
        )
