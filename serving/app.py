"""HTTP for the Open Inference Protocol: routes translate requests and hand off to the runtime.

Every error becomes ``{"error": "<message>"}`` with its status in one handler (:func:`_error`), which
also counts it in the metrics. The model loads in a background thread after startup, so
``/v2/health/live`` answers at once and ``/v2/health/ready`` turns true only after the warm-up inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlci import __version__
from mlci.errors import ConfigError
from mlci.model.artifact import read_manifest
from mlci.serving.batching import MicroBatcher
from mlci.serving.errors import (
    BadRequest,
    ClientClosed,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    UnsupportedEncoding,
)
from mlci.serving.http import BODY_TIMEOUT
from mlci.serving.metrics import CONTENT_TYPE, ServingMetrics
from mlci.serving.predlog import PredictionLog
from mlci.serving.protocol import encode_response
from mlci.serving.runtime import ModelInfo, ModelRuntime, model_info
from mlci.serving.settings import Settings
from mlci.serving.traffic import RAW_NAME as _TRAFFIC_KEY
from mlci.serving.traffic import is_synthetic

__all__ = ["ServerState", "create_app"]

_JSON = "application/json"
Loader = Callable[[], ModelRuntime]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type=_JSON)


class ServerState:
    """What the routes share: the model (once loaded), metrics, prediction log, readiness."""

    def __init__(self, settings: Settings, info: ModelInfo, loader: Loader) -> None:
        self.settings = settings
        self.info = info
        self.loader = loader
        self.runtime: ModelRuntime | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.metrics = ServingMetrics(model=info.name, digest=info.digest)
        self.log: PredictionLog | None = None
        self.on_load_error: Callable[[str], None] | None = None
        self.on_loaded: Callable[[], None] | None = None  # called once the model serves (the server tunes GC)
        self.on_ready: Callable[[], None] | None = None  # called on the event loop once ready is true
        self.body_bytes = 0  # bytes reserved by request bodies being received (see reserve_body)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()

    def next_id(self) -> str:
        """A request id unique within this process run (random prefix + counter)."""
        return f"{self._id_prefix}-{next(self._ids)}"

    def load(self) -> None:
        """Load the model and run the warm-up inference; readiness flips only after both succeed."""
        try:
            runtime = self.loader()
            runtime.warm_up()
        except Exception as exc:  # any load failure is reported through readiness and the server log
            self.load_error = f"{type(exc).__name__}: {exc}"
            print(f"mlci serve: the model failed to load: {self.load_error}", file=sys.stderr)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
        else:
            self.batcher = MicroBatcher(
                runtime.predict_indexed, self.settings.batch_max_rows, self.metrics.onnxruntime_call
            )
            if self.on_loaded is not None:
                self.on_loaded()
            self.runtime = runtime
            self.metrics.set_ready(True)
        finally:
            self.loaded.set()

    def reserve_body(self, size: int) -> int:
        """Hold ``size`` bytes of the server-wide body budget (``max_buffered_bytes``), or refuse with 503.

        Memory for bodies that arrive slowly is what N slow clients can make the server hold; the budget
        bounds it across all connections. Runs on the event loop only, so a plain integer is enough.
        """
        budget = self.settings.max_buffered_bytes
        if self.body_bytes + size > budget:
            self.metrics.limit("max_buffered_bytes")
            raise Overloaded(
                f"The server is receiving {self.body_bytes} bytes of request bodies; this body's {size} "
                f"would pass its limit of {budget} (--max-buffered-bytes). Retry in a moment."
            )
        self.body_bytes += size
        return size

    def open_log(self) -> None:
        """Start the prediction log, unless disabled (``log_dir`` None)."""
        log_dir = self.settings.log_dir
        if isinstance(log_dir, Path):
            self.log = PredictionLog(
                log_dir,
                model=self.info.name,
                digest=self.info.digest,
                max_bytes=self.settings.log_max_bytes,
                keep=self.settings.log_keep,
                flush_interval_s=self.settings.log_flush_interval_s,
                max_pending=self.settings.log_max_pending,
                max_pending_bytes=self.settings.log_max_pending_bytes,
                on_write=self.metrics.log_written,
                on_drop=self.metrics.log_dropped_records,
            )

    def check_model(self, request: Request) -> ModelRuntime:
        """The runtime for the URL's model and version; 404 for another model or version, 503 while loading."""
        name = request.path_params["name"]
        if name != self.info.name:
            raise ModelNotFound(f"Model {name!r} is not served here; this server serves {self.info.name!r}.")
        version = request.path_params.get("version")
        if version is not None and version not in self.info.versions:
            raise ModelNotFound(
                f"Model {name!r} has no version {version!r}; this server serves version {self.info.digest} "
                "(the bare hex digest works too)."
            )
        runtime = self.runtime
        if runtime is None:
            why = f"it failed to load: {self.load_error}" if self.load_error else "it is still loading"
            raise NotReady(f"Model {name!r} is not ready: {why}. Poll GET /v2/health/ready.")
        return runtime


def _infer_headers(request: Request) -> tuple[int | None, int | None, bytes | None, bool]:
    """Content-Length, Inference-Header-Content-Length, Content-Encoding and whether the request is
    marked synthetic (``X-MLCI-Traffic``), in one pass over the raw (lower-cased) headers."""
    content_length = header_length = encoding = traffic = None
    for key, value in request.scope["headers"]:
        if key == b"content-length":
            content_length = value
        elif key == b"inference-header-content-length":
            header_length = value
        elif key == b"content-encoding":
            encoding = value
        elif key == _TRAFFIC_KEY:
            traffic = value
    return (
        _byte_count("Content-Length", content_length),
        _byte_count("Inference-Header-Content-Length", header_length),
        encoding,
        traffic is not None and is_synthetic(traffic),
    )


def _byte_count(header: str, value: bytes | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:  # 18 digits: beyond any body; int() refuses 4,300+ digits
        shown = value[:40].decode("latin-1") + ("…" if len(value) > 40 else "")
        raise BadRequest(f"{header} is {shown!r} ({len(value)} characters); expected a number of bytes.")
    return int(value)


# Content-Encoding of a request body (tritonclient's request_compression_algorithm) -> zlib window bits to
# try: HTTP's "deflate" is the zlib format, but some clients send raw deflate.
_ENCODINGS = {
    b"gzip": (16 + zlib.MAX_WBITS,),
    b"x-gzip": (16 + zlib.MAX_WBITS,),
    b"deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
}


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """The body decoded per its Content-Encoding, refused with 413 once it inflates beyond ``limit``."""
    name = encoding.strip().lower()
    if name == b"identity":
        return body
    attempts = _ENCODINGS.get(name)
    if attempts is None:
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; send the body as is, "
            "or compressed with gzip or deflate."
        )
    label = name.decode()
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)  # at most limit + 1 bytes: enough to know it is too big
        except zlib.error as exc:
            error = exc
            continue
        if len(out) > limit:
            raise PayloadTooLarge(
                f"The {label} body inflates beyond {limit} bytes (--max-body-bytes). "
                "Split the batch into smaller requests."
            )
        if not inflater.eof:
            raise BadRequest(f"The {label} body is truncated: its compressed stream does not end.")
        return out
    raise BadRequest(f"The body is not valid {label} data ({error}); compress it again.")


async def _read_body(request: Request, declared: int | None, state: ServerState) -> bytes:
    """The body, refused with 413 as soon as it (or its Content-Length) exceeds ``--max-body-bytes``.

    A body that comes in one ASGI message (the common case: it arrived with the headers) is returned at
    once. A longer one is received by :func:`_receive_rest` against the server-wide budget.
    """
    limit = state.settings.max_body_bytes
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"The body is {declared} bytes; this server accepts at most {limit} (--max-body-bytes). "
            "Split the batch into smaller requests."
        )
    message = await request.receive()  # straight from the ASGI server: one message for a small body
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) <= limit:
            return body
    return await _receive_rest(request, message, declared, state)


async def _receive_rest(request: Request, message: Any, declared: int | None, state: ServerState) -> bytes:
    """A body in several messages: its Content-Length (or, chunked, each chunk as it comes) is reserved
    from the body budget first (503 when it would not fit), released when the body is complete or
    refused; the protocol's body timeout shows as ``scope[BODY_TIMEOUT]`` and gets 408."""
    limit = state.settings.max_body_bytes
    chunks: list[bytes] = []
    size = reserved = 0
    try:
        while True:
            if message["type"] == "http.disconnect":
                raise ClientClosed(f"The client disconnected after {size} bytes of the body.")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"The body exceeds {limit} bytes (--max-body-bytes). Split the batch into smaller requests."
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            if request.scope.get(BODY_TIMEOUT):
                of = "" if declared is None else f" of {declared}"
                raise RequestTimeout(
                    f"The request body did not arrive within {state.settings.body_timeout_s:g} s "
                    f"(--body-timeout): {size}{of} bytes received. Send the whole body at once."
                )
            wanted = size if declared is None else declared
            if wanted > reserved:
                reserved += state.reserve_body(wanted - reserved)
            message = await request.receive()
    finally:
        state.body_bytes -= reserved


def _routes(state: ServerState) -> list[Route]:
    info = state.info

    async def infer(request: Request) -> Response:
        request.scope["mlci.endpoint"] = "infer"
        start = request.scope["mlci.start"] = time.perf_counter()
        runtime = state.check_model(request)
        content_length, header_length, encoding, synthetic = _infer_headers(request)
        body = await _read_body(request, content_length, state)
        if encoding is not None:
            body = _decompress(body, encoding, state.settings.max_body_bytes)
        decoded = runtime.decoder.decode(body, header_length)
        batcher = state.batcher
        assert batcher is not None  # load() sets it before it publishes the runtime check_model returned
        results, index = await batcher.predict(decoded)  # may share a call with concurrent requests
        request_id = decoded.id if decoded.id is not None else state.next_id()  # "" is an id too
        by_name = dict(zip(runtime.output_names, results, strict=True))
        if decoded.outputs is None:
            chosen = [(spec, by_name[spec.name], decoded.binary_output) for spec in runtime.outputs]
        else:
            specs = {spec.name: spec for spec in runtime.outputs}
            chosen = [(specs[name], by_name[name], binary) for name, binary in decoded.outputs]
        labels = runtime.labels if index is not None else None
        encoded = None
        if labels is not None:  # the label output holds class indices: names only where JSON needs them
            for position, (spec, array, binary) in enumerate(chosen):
                if spec.name == runtime.label_output:
                    if binary:
                        encoded = {spec.name: labels.binary(index)}
                    else:
                        chosen[position] = (spec, labels.strings(array), binary)
        content, json_length = encode_response(
            model_name=info.name,
            model_version=info.digest,
            request_id=request_id,
            outputs=chosen,
            encoded=encoded,
        )
        if state.log is not None:
            state.log.append(
                request_id,
                time.time(),
                decoded.rows,
                decoded.numeric,
                decoded.categories,
                by_name,  # probabilities are float32 already (runtime.PROBABILITY_TYPE)
                None if labels is None else {runtime.label_output: (labels.classes, index)},
                synthetic,
            )
        metrics = state.metrics
        if synthetic:  # a smoke test's or a check's rows: counted apart from the predictions
            metrics.synthetic_rows += decoded.rows
        elif labels is not None:
            metrics.inference(decoded.rows, None, labels.counts(index))
        else:
            metrics.inference(decoded.rows, results[0] if info.task == "classification" else None)
        metrics.request("infer", 200, time.perf_counter() - start)
        if json_length is None:
            return Response(content, media_type=_JSON)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    async def live(request: Request) -> Response:
        state.metrics.request("live", 200)
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = state.runtime is not None
        status = 200 if is_ready else 503
        state.metrics.request("ready", status)
        payload: dict[str, Any] = {"ready": is_ready}
        if state.load_error:
            payload["error"] = state.load_error
        return _json(payload, status)

    async def model_ready(request: Request) -> Response:
        request.scope["mlci.endpoint"] = "ready"
        state.check_model(request)
        state.metrics.request("ready", 200)
        return _json({"name": info.name, "ready": True})

    async def model_metadata(request: Request) -> Response:
        request.scope["mlci.endpoint"] = "metadata"
        runtime = state.check_model(request)
        state.metrics.request("metadata", 200)
        return _json(runtime.metadata())

    async def server_metadata(request: Request) -> Response:
        state.metrics.request("metadata", 200)
        return _json({"name": "mlci", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    return [
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{version}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{version}/ready", model_ready, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(version, model_metadata, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def create_app(settings: Settings, *, loader: Loader | None = None) -> Starlette:
    """The ASGI app for ``settings.artifact``; ``loader`` replaces how the model loads (tests pass a slow one)."""
    if settings.artifact is None:
        raise ConfigError("No artifact to serve: pass ARTIFACT to `mlci serve` or set MLCI_SERVE_ARTIFACT.")
    artifact: Path = settings.artifact
    info = model_info(read_manifest(artifact))
    settings = settings.for_model(info.name)
    settings.check()
    state = ServerState(
        settings,
        info,
        loader if loader is not None else lambda: ModelRuntime.load(artifact, threads=settings.threads),
    )

    async def _error(request: Request, exc: Exception) -> Response:
        headers = None
        if isinstance(exc, ServingError):
            status, message, headers = exc.status_code, str(exc), exc.headers
        elif isinstance(exc, HTTPException):
            status = exc.status_code
            message = f"{request.method} {request.url.path}: {exc.detail}. The server speaks the Open Inference Protocol under /v2."
        else:
            status, message = (
                500,
                f"Internal error ({type(exc).__name__}); this is a bug in mlci serve, please report it.",
            )
        start = request.scope.get("mlci.start")
        state.metrics.request(
            request.scope.get("mlci.endpoint", "other"),
            status,
            None if start is None else time.perf_counter() - start,
        )
        return _json({"error": message}, status, headers)

    def _loaded(_: asyncio.Future[None]) -> None:
        if state.runtime is not None and state.on_ready is not None:
            state.on_ready()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.open_log()
        loading = asyncio.get_running_loop().run_in_executor(None, state.load)
        loading.add_done_callback(_loaded)
        try:
            yield
        finally:
            # Uvicorn calls this after in-flight requests finished: every answered request is queued, so
            # closing the log writes them all.
            if not loading.done():
                await loading  # a load still running (e.g. SIGTERM during start-up) finishes first
            if state.log is not None:
                try:
                    state.log.close()
                except OSError as exc:  # the lines it lost are counted in mlci_prediction_log_dropped_total
                    print(f"mlci serve: the prediction log's last write failed: {exc}", file=sys.stderr)

    app = Starlette(
        routes=_routes(state),
        exception_handlers={ServingError: _error, HTTPException: _error, Exception: _error},
        lifespan=lifespan,
    )
    app.state.mlci = state
    return app
