"""Run the app under uvicorn (uvloop + httptools) until SIGTERM/SIGINT.

On SIGTERM uvicorn stops accepting connections, closes idle keep-alive connections, lets in-flight requests
finish (up to ``graceful_timeout_s``), then runs the app's lifespan shutdown, which flushes the
prediction log. Why this stack: uvicorn with httptools and uvloop is the fastest well-kept ASGI server
for CPython; starlette adds routing and error mapping for a few microseconds a request. Uvicorn's
httptools protocol is used through a subclass that adds header and body timeouts and a connection cap
(:mod:`mlci.serving.http`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from mlci.errors import CheckFailed, ConfigError
from mlci.model.artifact import verify_artifact
from mlci.model.onnxio import refuse_external_data
from mlci.serving.app import ServerState, create_app
from mlci.serving.http import protocol_class
from mlci.serving.settings import Settings

__all__ = [
    "announce_when_ready",
    "build_server",
    "freeze_startup_objects",
    "keep_freed_memory",
    "serve",
    "uvicorn_config",
]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive (modules, the model, the app) out of the GC's sight.

    They live as long as the process, but each full collection walked all ~100,000 of them: with
    requests batched together more objects are young at once, full collections come more often, and at
    32 concurrent clients they cost 15 µs a request (78 → 62 µs, measured). ``gc.freeze`` is CPython's
    tool for exactly this; objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Tell glibc's malloc to reuse freed memory instead of handing it back to the kernel at once.

    A 1024-row request allocates a few buffers of 100-200 KiB (the body, the log line) and frees them a
    moment later. By default glibc serves each from fresh ``mmap`` pages or trims the heap after it, so
    every request pays for page faults: 14% of the server's CPU under batch load, measured with
    ``perf``. With these thresholds the pages stay in the process (up to ``trim_threshold`` bytes idle)
    and are reused. False (and nothing changed) where the C library has no ``mallopt`` (musl, macOS).
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 < value < 2**31:
            raise ValueError(f"{name} is {value}; mallopt takes a positive C int (below 2 GiB).")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (shared by :func:`build_server` and the tests' servers).

    ``limit_concurrency`` stays unset: the protocol class caps connections itself (see
    :mod:`mlci.serving.http` for why), and WebSocket upgrades are off (this is an HTTP API only; the
    protocol's timers assume the connection stays HTTP).
    """
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_class(settings, app.state.mlci.metrics),
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )


def build_server(settings: Settings, app: Any = None) -> uvicorn.Server:
    """A configured ``uvicorn.Server`` for ``settings`` (the app is built from the artifact unless given)."""
    app = app if app is not None else create_app(settings)
    server = uvicorn.Server(uvicorn_config(settings, app))
    state = app.state.mlci

    def _stop(message: str) -> None:
        server.should_exit = True

    state.on_load_error = _stop
    return server


def announce_when_ready(server: uvicorn.Server, state: ServerState) -> None:
    """Print one line on stderr once the model serves and the socket listens (whichever comes last):
    ``mlci serve: serving <model> <digest> at http://HOST:PORT (prediction log: <dir> | off)``."""

    def announce() -> None:
        if not server.started:  # the model loaded before uvicorn bound the socket: look again soon
            asyncio.get_running_loop().call_later(0.01, announce)
            return
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        log_dir = state.settings.log_dir
        where = str(log_dir) if log_dir is not None else "off"
        print(
            f"mlci serve: serving {state.info.name} {state.info.digest} at http://{host}:{port} "
            f"(prediction log: {where})",
            file=sys.stderr,
            flush=True,
        )

    state.on_ready = announce


def _open_files_for(connections: int) -> None:
    """Raise the soft open-files limit so that ``connections`` sockets fit (up to the hard limit): past it,
    accept() fails and clients wait in the backlog instead of getting the cap's 503."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    wanted = connections + 64  # the listening socket, the log, the model, the interpreter's own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        target = soft
    if target < wanted:
        print(
            f"mlci serve: warning: the open-files limit is {target}, too low for --max-connections "
            f"{connections}; connections past it wait unanswered (raise `ulimit -n`).",
            file=sys.stderr,
        )


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Verify the artifact (refuse a tampered one before binding), then serve until told to stop."""
    if settings.artifact is None:
        raise ConfigError("No artifact to serve: pass ARTIFACT to `mlci serve` or set MLCI_SERVE_ARTIFACT.")
    manifest = verify_artifact(settings.artifact)
    # Before binding, like a tampered artifact: a model that would read files from this machine (the
    # runtime refuses it as well, for any other way in).
    refuse_external_data((settings.artifact / "model.onnx").read_bytes(), f"{settings.artifact}/model.onnx")
    settings = settings.for_model(str(manifest["name"]))
    settings.check()
    log_dir = settings.log_dir
    if isinstance(log_dir, Path):
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"Cannot create the prediction log directory '{log_dir}': {exc}. Pick another --log-dir."
            ) from exc
        if not os.access(log_dir, os.W_OK):
            raise ConfigError(
                f"The prediction log directory '{log_dir}' is not writable. Pick another --log-dir."
            )
    keep_freed_memory()
    _open_files_for(settings.max_connections)
    app = create_app(settings)
    server = build_server(settings, app)
    state = app.state.mlci
    state.on_loaded = freeze_startup_objects
    announce_when_ready(server, state)
    server.run(sockets=sockets)
    if state.load_error:
        raise CheckFailed(f"The model could not be served: {state.load_error}")
    if not server.started:
        raise ConfigError(
            f"The server did not start on {settings.host}:{settings.port}; the reason is in the log above "
            "(most often the port is in use: pick another --port)."
        )
