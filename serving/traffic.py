"""How a client marks a request as synthetic traffic (a smoke test, a post-deploy check) rather than real.

The mark is an HTTP header, ``X-MLCI-Traffic: synthetic``: it says where a request comes from, not what
to infer, like a tracing header; every HTTP client sends one per request (``tritonclient.http``'s and
kserve's ``infer(..., headers=...)``, curl's ``-H``), and the server reads it in the same pass over the
raw headers that finds Content-Length, so unmarked requests pay nothing. A marked request is answered
like any other, written to the prediction log with ``"synthetic": true`` (an audit trail of the checks a
version got) and kept out of the prediction counts in ``/metrics`` and out of every monitor window.
Without the header a request is real traffic; any other value is refused (400), so a typo cannot pass
a check's requests off as production traffic.

Nothing but :mod:`mlci.serving.errors` is imported: the smoke test reads the header from here without
loading the HTTP stack.
"""

from __future__ import annotations

from mlci.serving.errors import BadRequest

__all__ = ["RAW_NAME", "SYNTHETIC", "SYNTHETIC_HEADERS", "TRAFFIC_HEADER", "is_synthetic"]

TRAFFIC_HEADER = "X-MLCI-Traffic"
SYNTHETIC = "synthetic"
SYNTHETIC_HEADERS = {TRAFFIC_HEADER: SYNTHETIC}  # what mlci's own checks send with every request
RAW_NAME = TRAFFIC_HEADER.lower().encode("latin-1")  # the header's name as the ASGI scope carries it
_RAW_VALUE = SYNTHETIC.encode("ascii")


def is_synthetic(value: bytes | None) -> bool:
    """Whether a request's raw header value (None: no header) marks it synthetic; BadRequest (400) for
    a value that is not the mark (any case and surrounding spaces are accepted)."""
    if value is None:
        return False
    if value.strip().lower() == _RAW_VALUE:
        return True
    shown = value[:40].decode("latin-1") + ("…" if len(value) > 40 else "")
    raise BadRequest(
        f"{TRAFFIC_HEADER} is {shown!r}; expected {SYNTHETIC!r} (a smoke test or check request: logged "
        "flagged and kept out of monitoring). For real traffic leave the header out."
    )
