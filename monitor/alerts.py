"""Alert outbox on disk and delivery to a webhook: nothing is lost when the receiver is down.

Every alert is first written to ``<outbox>/<id>.json`` (write to a temporary file, fsync, rename), then
delivered. One file per alert holds the payload and the delivery record::

    {"id", "seq", "created", "status": "pending" | "delivered" | "dead", "attempts", "failures",
     "rejections", "next_attempt", "last_error", "delivered_at", "payload": {...}}

Delivery POSTs the payload as JSON with an ``Idempotency-Key`` header equal to the alert id (the same
on every retry, so a receiver can drop duplicates when a response was lost; the monitor makes ids
unique per monitor instance). Each POST has a total deadline (``deadline_s``: connect, send and every
read together; a receiver that drips its answer a byte at a time is cut off). What each answer does:

- 2xx: delivered.
- 5xx, 408, 425, 429: a failure; up to ``attempts_per_cycle`` tries per call with exponential backoff,
  then later cycles; after ``max_failures`` failures the alert is marked ``dead`` (the file stays).
- other 4xx and every 3xx: *rejected*. The receiver refuses this body (e.g. a Slack-style receiver that
  wants its own format) or the URL is wrong (a redirect is never followed: a POST re-sent elsewhere can
  lose its body; the error names the ``Location``). Both need a fix by a person, so the alert stays
  pending and is tried once per due cycle with a long backoff (``reject_backoff_s`` doubling up to
  ``max_reject_backoff_s``); only after ``max_rejections`` rejections is it ``dead``.
- 410 Gone: the receiver says this endpoint is gone for good: ``dead`` at once.
- unreachable, or no complete answer within the deadline: does *not* count; the alert (and the ones
  after it) wait for a later cycle, however long the outage.

Every outcome but 2xx is returned in :attr:`DeliveryResult.failures` (status, the receiver's reason,
what happens next) for the caller to say out loud.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from mlci.httpdeadline import SocketDeadline

__all__ = ["DeliveryResult", "Outbox", "atomic_write_json", "webhook_problem"]

_RETRYABLE = {408, 425, 429}


def atomic_write_json(path: Path, document: Any) -> None:
    """Write JSON to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(
                orjson.dumps(
                    document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
                )
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery pass did; ``failures`` has one entry per alert not delivered on its last try:
    ``{"id", "kind", "error", "status", "retry_at"}`` (kind: failed, rejected, redirect, gone,
    unreachable, timeout; status: pending or dead; retry_at: the clock time of the next try or None)."""

    delivered: list[str]
    pending: list[str]
    dead: list[str]
    attempts: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    failed_attempts: dict[str, int] = field(default_factory=dict)


_KIND_OUTCOME = {"failed": "failed", "rejected": "rejected", "redirect": "rejected", "gone": "gone",
                 "unreachable": "unreachable", "timeout": "unreachable"}  # fmt: skip


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (http or https with a host), or None when it can."""
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        return "it has no scheme"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme!r}"
    if not parts.hostname:
        return "it has no host"
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError as exc:
        return f"its port is invalid ({exc})"
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Outbox:
    """A directory of alert files; :meth:`put` stores, :meth:`deliver` sends the pending ones."""

    def __init__(
        self,
        directory: Path,
        *,
        max_failures: int = 5,
        attempts_per_cycle: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 5.0,
        deadline_s: float = 10.0,
        reject_backoff_s: float = 300.0,
        max_reject_backoff_s: float = 3600.0,
        max_rejections: int = 24,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_failures = max_failures
        self.attempts_per_cycle = attempts_per_cycle
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.reject_backoff_s = reject_backoff_s
        self.max_reject_backoff_s = max_reject_backoff_s
        self.max_rejections = max_rejections
        self.clock = clock
        self.sleep = sleep
        self.log = log if log is not None else _stderr
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, payload: Mapping[str, Any], alert_id: str | None = None) -> str:
        """Store one alert (pending) and return its id; an existing id is left as it is (idempotent)."""
        alert_id = (
            alert_id or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:12]}"
        )
        path = self.directory / f"{alert_id}.json"
        if not path.exists():
            seq = sum(1 for _ in self.directory.glob("*.json"))  # keeps creation order within one clock tick
            atomic_write_json(path, {
                "id": alert_id, "seq": seq, "created": self.clock(), "status": "pending", "attempts": 0, "failures": 0,
                "rejections": 0, "next_attempt": 0.0, "last_error": None, "delivered_at": None, "payload": dict(payload),
            })  # fmt: skip
        return alert_id

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every alert document (oldest first), optionally only those with ``status``.

        A file that is no alert document (not JSON, e.g. cut short by a full disk, or without an id,
        creation time or status) is renamed to ``<name>.bad``, said on stderr and counted in
        :attr:`quarantined`: one damaged file must not stop the delivery of the others.
        """
        docs = []
        for path in sorted(self.directory.glob("*.json")):
            doc = self._read(path)
            if doc is not None:
                docs.append(doc)
        docs.sort(key=lambda d: (d["created"], d.get("seq", 0), d["id"]))
        return [d for d in docs if status is None or d["status"] == status]

    @property
    def quarantined(self) -> int:
        """How many outbox files were set aside as ``*.bad`` (they stay for a person to look at)."""
        return sum(1 for _ in self.directory.glob("*.bad"))

    def _read(self, path: Path) -> dict[str, Any] | None:
        """The alert document in ``path``, or None after setting an unusable file aside."""
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None  # removed meanwhile
        except (OSError, orjson.JSONDecodeError) as exc:
            problem = f"cannot be read as JSON ({exc})"
        else:
            if isinstance(doc, dict) and all(k in doc for k in ("id", "created", "status")):
                return doc
            problem = "is no alert document (a JSON object with id, created and status)"
        bad = path.with_name(path.name + ".bad")
        try:
            path.replace(bad)
        except OSError as exc:
            self.log(
                f"[mlci monitor] outbox file '{path}' {problem}; it could not be set aside ({exc}): skipped"
            )
            return None
        self.log(f"[mlci monitor] outbox file '{path}' {problem}; set aside as '{bad}' (not delivered)")
        return None

    def _save(self, doc: dict[str, Any]) -> None:
        atomic_write_json(self.directory / f"{doc['id']}.json", doc)

    def _backoff(self, step: int) -> float:
        return float(min(self.backoff_s * 2**step, self.max_backoff_s))

    def _reject_backoff(self, rejections: int) -> float:
        return float(min(self.reject_backoff_s * 2 ** max(rejections - 1, 0), self.max_reject_backoff_s))

    def deliver(self, url: str | None, client: Any = None) -> DeliveryResult:
        """POST every pending alert that is due to ``url``; returns what was delivered, left or given up.

        ``client`` is an ``httpx.Client`` (tests may pass one with a custom transport); one is created if
        None (no redirects followed, no kept-alive connections, so the deadline sees every socket).
        """
        import httpx

        delivered: list[str] = []
        dead: list[str] = []
        failures: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        attempts = 0
        pending = self.alerts("pending")
        if url is None or not pending:
            return DeliveryResult([], [d["id"] for d in pending], [], 0)
        own = client is None
        http = client if client is not None else httpx.Client(
            timeout=self.timeout_s, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
        )  # fmt: skip
        try:
            for doc in pending:
                if doc["next_attempt"] > self.clock():
                    continue
                kind = ""
                for step in range(self.attempts_per_cycle):
                    if step:
                        self.sleep(self._backoff(step - 1))
                    attempts += 1
                    doc["attempts"] += 1
                    kind = self._post(http, url, doc)
                    if kind != "delivered":
                        counts[kind] = counts.get(kind, 0) + 1
                    self._settle(doc, kind)
                    self._save(doc)
                    if doc["status"] != "pending" or _KIND_OUTCOME.get(kind) != "failed":
                        break  # only server errors are worth another try right away
                if doc["status"] == "delivered":
                    delivered.append(doc["id"])
                    continue
                if doc["status"] == "dead":
                    dead.append(doc["id"])
                failures.append({"id": doc["id"], "kind": kind, "error": doc["last_error"], "status": doc["status"],
                                 "retry_at": doc["next_attempt"] if doc["status"] == "pending" else None})  # fmt: skip
                if _KIND_OUTCOME[kind] == "unreachable":
                    break  # the receiver is down or stuck: the other alerts wait for a later cycle too
        finally:
            if own:
                http.close()
        left = [d["id"] for d in self.alerts("pending")]
        return DeliveryResult(delivered, left, dead, attempts, failures, counts)

    def _settle(self, doc: dict[str, Any], kind: str) -> None:
        """Update ``doc``'s status and next try after an attempt that ended as ``kind``."""
        outcome = _KIND_OUTCOME.get(kind, kind)
        if outcome == "delivered":
            doc.update(status="delivered", delivered_at=self.clock(), last_error=None)
        elif outcome == "gone":
            doc["status"] = "dead"
        elif outcome == "failed":
            doc["failures"] += 1
            if doc["failures"] >= self.max_failures:
                doc["status"] = "dead"
            else:
                doc["next_attempt"] = self.clock() + self._backoff(doc["failures"])
        elif outcome == "rejected":
            doc["rejections"] = doc.get("rejections", 0) + 1
            if doc["rejections"] >= self.max_rejections:
                doc["status"] = "dead"
            else:
                doc["next_attempt"] = self.clock() + self._reject_backoff(doc["rejections"])
        else:  # unreachable: does not count, try again next cycle
            doc["next_attempt"] = self.clock() + self._backoff(doc["failures"])

    def _post(self, http: Any, url: str, doc: dict[str, Any]) -> str:
        """One POST under the deadline; returns its kind and sets ``doc["last_error"]`` when it failed."""
        import httpx

        with SocketDeadline().armed(self.deadline_s) as deadline:
            try:
                response = http.post(
                    url,
                    content=orjson.dumps(doc["payload"], option=orjson.OPT_SERIALIZE_NUMPY),
                    headers={"Content-Type": "application/json", "Idempotency-Key": doc["id"]},
                    # per operation; the deadline bounds the whole exchange
                    timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, self.deadline_s)),
                    extensions={"trace": deadline.trace},
                )
            except httpx.TransportError as exc:
                if deadline.expired:
                    doc["last_error"] = (
                        f"no complete answer within the {self.deadline_s:g} s delivery deadline"
                    )
                    return "timeout"
                doc["last_error"] = f"{type(exc).__name__}: {exc}"
                return "unreachable"
        code = response.status_code
        if 200 <= code < 300:
            return "delivered"
        reason = " ".join(response.text.split())[:300]
        doc["last_error"] = f"HTTP {code}: {reason}" if reason else f"HTTP {code}"
        if code >= 500 or code in _RETRYABLE:
            return "failed"
        if 300 <= code < 400:
            location = response.headers.get("location", "(no Location header)")
            doc["last_error"] = (
                f"HTTP {code} redirect to {location}, not followed: the webhook URL is misconfigured; "
                "set it to the address the receiver answers at"
            )
            return "redirect"
        return "gone" if code == 410 else "rejected"
