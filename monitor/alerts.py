"""Alert outbox on disk and delivery to a webhook: nothing is lost when the receiver is down.

Every alert is first written to ``<outbox>/<id>.json`` (write to a temporary file, fsync, rename), then
delivered. One file per alert holds the payload and the delivery record::

    {"id", "seq", "created", "status": "pending" | "delivered" | "dead", "attempts", "failures",
     "next_attempt", "last_error", "delivered_at", "payload": {...}}

Delivery POSTs the payload as JSON with an ``Idempotency-Key`` header equal to the alert id (the same
on every retry, so a receiver can drop duplicates when a response was lost). Within one call each
pending alert gets up to ``attempts_per_cycle`` tries with exponential backoff. What counts toward
giving up (``max_failures``, then the file stays, marked ``dead``): an HTTP error answer (5xx, 408,
429). A 4xx answer means the receiver rejects the payload itself, so the alert is dead at once. An
unreachable receiver does *not* count: the alert waits for a later cycle, however long the outage.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["DeliveryResult", "Outbox", "atomic_write_json"]

_RETRYABLE = {408, 425, 429}


def atomic_write_json(path: Path, document: Any) -> None:
    """Write JSON to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery pass did."""

    delivered: list[str]
    pending: list[str]
    dead: list[str]
    attempts: int


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
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.directory = directory
        self.max_failures = max_failures
        self.attempts_per_cycle = attempts_per_cycle
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, payload: Mapping[str, Any], alert_id: str | None = None) -> str:
        """Store one alert (pending) and return its id; an existing id is left as it is (idempotent)."""
        alert_id = alert_id or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:12]}"
        path = self.directory / f"{alert_id}.json"
        if not path.exists():
            seq = sum(1 for _ in self.directory.glob("*.json"))  # keeps creation order within one clock tick
            atomic_write_json(path, {
                "id": alert_id, "seq": seq, "created": self.clock(), "status": "pending", "attempts": 0, "failures": 0,
                "next_attempt": 0.0, "last_error": None, "delivered_at": None, "payload": dict(payload),
            })  # fmt: skip
        return alert_id

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every alert document (oldest first), optionally only those with ``status``."""
        docs = [orjson.loads(p.read_bytes()) for p in sorted(self.directory.glob("*.json"))]
        docs.sort(key=lambda d: (d["created"], d.get("seq", 0), d["id"]))
        return [d for d in docs if status is None or d["status"] == status]

    def _save(self, doc: dict[str, Any]) -> None:
        atomic_write_json(self.directory / f"{doc['id']}.json", doc)

    def _backoff(self, step: int) -> float:
        return float(min(self.backoff_s * 2**step, self.max_backoff_s))

    def deliver(self, url: str | None, client: Any = None) -> DeliveryResult:
        """POST every pending alert that is due to ``url``; returns what was delivered, left or given up.

        ``client`` is an ``httpx.Client`` (tests may pass one with a custom transport); one is created if None.
        """
        import httpx

        delivered: list[str] = []
        dead: list[str] = []
        attempts = 0
        pending = self.alerts("pending")
        if url is None or not pending:
            return DeliveryResult([], [d["id"] for d in pending], [], 0)
        own = client is None
        http = client if client is not None else httpx.Client(timeout=self.timeout_s)
        try:
            for doc in pending:
                if doc["next_attempt"] > self.clock():
                    continue
                outcome = ""
                for step in range(self.attempts_per_cycle):
                    if step:
                        self.sleep(self._backoff(step - 1))
                    attempts += 1
                    doc["attempts"] += 1
                    outcome = self._post(http, url, doc)
                    if outcome == "delivered":
                        doc.update(status="delivered", delivered_at=self.clock(), last_error=None)
                    elif outcome == "rejected" or (outcome == "failed" and doc["failures"] >= self.max_failures):
                        doc["status"] = "dead"
                    self._save(doc)
                    if doc["status"] != "pending":
                        break
                if doc["status"] == "pending":
                    doc["next_attempt"] = self.clock() + self._backoff(doc["failures"])
                    self._save(doc)
                (delivered if doc["status"] == "delivered" else dead if doc["status"] == "dead" else []).append(doc["id"])
                if outcome == "unreachable":
                    break  # the receiver is down: the other alerts wait for a later cycle too
        finally:
            if own:
                http.close()
        left = [d["id"] for d in self.alerts("pending")]
        return DeliveryResult(delivered, left, dead, attempts)

    def _post(self, http: Any, url: str, doc: dict[str, Any]) -> str:
        import httpx

        try:
            response = http.post(
                url,
                content=orjson.dumps(doc["payload"], option=orjson.OPT_SERIALIZE_NUMPY),
                headers={"Content-Type": "application/json", "Idempotency-Key": doc["id"]},
            )
        except httpx.TransportError as exc:
            doc["last_error"] = f"{type(exc).__name__}: {exc}"
            return "unreachable"
        if 200 <= response.status_code < 300:
            return "delivered"
        doc["last_error"] = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code >= 500 or response.status_code in _RETRYABLE:
            doc["failures"] += 1
            return "failed"
        return "rejected"
