"""One error base for the server; each error carries the HTTP status the app answers with.

The app maps every :class:`ServingError` to ``{"error": "<message>"}`` in one handler, so a message
written here is exactly what a client reads.
"""

from __future__ import annotations

from mlci.errors import MlciError

__all__ = [
    "BadRequest",
    "ClientClosed",
    "InvalidInput",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServingError",
    "UnsupportedEncoding",
]


class ServingError(MlciError):
    """Base error of the server; ``status_code`` is the HTTP status of the answer."""

    status_code = 400
    headers: dict[str, str] | None = None  # extra response headers


class BadRequest(ServingError):
    """The body is not a well-formed Open Inference Protocol request (bad JSON, bad structure)."""

    status_code = 400


class InvalidInput(ServingError):
    """A well-formed request that does not fit this model (unknown/missing input, datatype, shape, value)."""

    status_code = 422


class ModelNotFound(ServingError):
    """The URL names a model or version this server does not serve."""

    status_code = 404


class PayloadTooLarge(ServingError):
    """The body exceeds the configured size limit."""

    status_code = 413


class UnsupportedEncoding(ServingError):
    """The body's Content-Encoding is not one the server decodes (gzip, deflate, identity)."""

    status_code = 415


class RequestTimeout(ServingError):
    """The body did not arrive within the body timeout (the connection is closed after the answer)."""

    status_code = 408


class ClientClosed(ServingError):
    """The client went away before sending its whole body (499, as nginx logs it; nobody reads the answer)."""

    status_code = 499


class NotReady(ServingError):
    """The model is still loading or warming up."""

    status_code = 503


class Overloaded(ServingError):
    """A limit on what the server holds for all clients together was reached; retrying later can succeed."""

    status_code = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012 (read-only)
