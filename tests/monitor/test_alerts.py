"""The alert outbox against a real webhook receiver on 127.0.0.1: delivery, outage, retries, dead letters."""

from __future__ import annotations

from pathlib import Path

import orjson

from mlci.monitor.alerts import Outbox

from .conftest import ReceiverServer


class Clock:
    """A settable clock, and a sleep that advances it and records how long it was asked to wait."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def outbox(tmp_path: Path, clock: Clock, **kwargs: int | float) -> Outbox:
    return Outbox(tmp_path / "outbox", clock=clock, sleep=clock.sleep, timeout_s=2.0, **kwargs)  # type: ignore[arg-type]


def test_alert_is_delivered_with_its_payload_and_idempotency_key(
    tmp_path: Path, webhook: ReceiverServer
) -> None:
    clock = Clock()
    box = outbox(tmp_path, clock)
    alert_id = box.put({"event": "alert", "condition": "drift", "drifted_features": ["mean_radius"]})
    result = box.deliver(webhook.receiver.url)
    assert result.delivered == [alert_id] and result.pending == [] and result.dead == []
    [request] = webhook.receiver.requests
    assert request["body"] == {"event": "alert", "condition": "drift", "drifted_features": ["mean_radius"]}
    assert request["headers"]["idempotency-key"] == alert_id
    assert request["headers"]["content-type"] == "application/json"
    doc = orjson.loads((tmp_path / "outbox" / f"{alert_id}.json").read_bytes())
    assert doc["status"] == "delivered" and doc["attempts"] == 1
    assert box.deliver(webhook.receiver.url).attempts == 0  # nothing is sent twice
    assert not list((tmp_path / "outbox").glob(".*tmp"))  # atomic writes leave no temporary files


def test_receiver_down_keeps_the_alert_until_it_comes_back(tmp_path: Path, webhook: ReceiverServer) -> None:
    clock = Clock()
    box = outbox(tmp_path, clock, max_failures=2)
    webhook.stop()
    ids = [box.put({"n": i}) for i in range(3)]
    for _ in range(4):  # a long outage: more cycles than max_failures, yet nothing is given up
        result = box.deliver(webhook.receiver.url)
        assert result.delivered == [] and result.dead == [] and result.pending == ids
        clock.now += 60
    doc = orjson.loads((tmp_path / "outbox" / f"{ids[0]}.json").read_bytes())
    assert doc["status"] == "pending" and doc["failures"] == 0 and "ConnectError" in doc["last_error"]
    webhook.start()
    result = box.deliver(webhook.receiver.url)
    assert result.delivered == ids and result.pending == []
    assert [r["body"] for r in webhook.receiver.requests] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_server_errors_are_retried_with_backoff_then_dead_lettered(
    tmp_path: Path, webhook: ReceiverServer
) -> None:
    clock = Clock()
    box = outbox(tmp_path, clock, max_failures=3, attempts_per_cycle=3, backoff_s=0.5)
    webhook.receiver.status = 500
    alert_id = box.put({"event": "alert"})
    result = box.deliver(webhook.receiver.url)
    assert result.dead == [alert_id] and result.attempts == 3
    assert clock.slept == [0.5, 1.0]  # exponential backoff between the tries
    keys = {r["headers"]["idempotency-key"] for r in webhook.receiver.requests}
    assert keys == {alert_id} and len(webhook.receiver.requests) == 3
    doc = orjson.loads((tmp_path / "outbox" / f"{alert_id}.json").read_bytes())  # kept, marked dead
    assert doc["status"] == "dead" and doc["failures"] == 3 and doc["last_error"].startswith("HTTP 500")
    webhook.receiver.status = 200
    assert box.deliver(webhook.receiver.url).attempts == 0  # dead letters are not retried


def test_transient_errors_across_cycles_keep_the_same_key(tmp_path: Path, webhook: ReceiverServer) -> None:
    clock = Clock()
    box = outbox(tmp_path, clock, max_failures=5, attempts_per_cycle=1)
    webhook.receiver.script = [503, 429]
    alert_id = box.put({"event": "alert"})
    assert box.deliver(webhook.receiver.url).pending == [alert_id]
    assert box.deliver(webhook.receiver.url).attempts == 0  # not due yet: backoff until next_attempt
    clock.now += 10
    assert box.deliver(webhook.receiver.url).pending == [alert_id]
    clock.now += 10
    assert box.deliver(webhook.receiver.url).delivered == [alert_id]
    assert [r["status"] for r in webhook.receiver.requests] == [503, 429, 200]
    assert {r["headers"]["idempotency-key"] for r in webhook.receiver.requests} == {alert_id}


def test_a_rejected_payload_waits_with_a_long_backoff_then_is_dead(
    tmp_path: Path, webhook: ReceiverServer
) -> None:
    """4xx: one try per due cycle (the same body gets the same answer), backoff 300 s doubling to 3600 s,
    dead only after max_rejections; 410 Gone is dead at once."""
    clock = Clock()
    box = outbox(tmp_path, clock, max_rejections=3, attempts_per_cycle=3)
    webhook.receiver.status = 422
    webhook.receiver.answer = {"error": "missing field 'text'"}
    alert_id = box.put({"event": "alert"})
    result = box.deliver(webhook.receiver.url)
    assert result.pending == [alert_id] and result.dead == [] and result.attempts == 1
    [failure] = result.failures
    assert (
        failure["kind"] == "rejected"
        and failure["status"] == "pending"
        and failure["retry_at"] == clock.now + 300
    )
    assert "HTTP 422" in failure["error"] and "missing field 'text'" in failure["error"]
    assert box.deliver(webhook.receiver.url).attempts == 0  # not due yet
    clock.now += 300
    assert box.deliver(webhook.receiver.url).failures[0]["retry_at"] == clock.now + 600
    clock.now += 600
    assert box.deliver(webhook.receiver.url).dead == [alert_id]  # the third rejection
    assert len(webhook.receiver.requests) == 3 and clock.slept == []
    webhook.receiver.status = 410
    gone = box.put({"event": "alert"}, "gone-1")
    result = box.deliver(webhook.receiver.url)
    assert (
        result.dead == [gone] and result.failures[0]["kind"] == "gone" and len(webhook.receiver.requests) == 4
    )


def test_put_is_idempotent_and_no_webhook_keeps_alerts(tmp_path: Path) -> None:
    clock = Clock()
    box = outbox(tmp_path, clock)
    box.put({"v": 1}, "fixed-id")
    box.put({"v": 2}, "fixed-id")  # a re-run of a crashed cycle must not duplicate or change an alert
    assert [a["payload"] for a in box.alerts()] == [{"v": 1}]
    assert box.deliver(None).pending == ["fixed-id"]
