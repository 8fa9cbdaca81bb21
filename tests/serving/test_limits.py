"""Slow and greedy clients against a real server on 127.0.0.1, over raw sockets: header, body and idle
timeouts, the connection cap, and the memory bound on buffered request bodies (RSS of `mlci serve`).

Every wait is bounded: a server that holds a connection open fails the test in seconds, not by hanging.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mlci.serving.settings import Settings

INFER = "/v2/models/breast-cancer/infer"
HEADER_S, BODY_S, KEEP_ALIVE_S = 0.5, 1.0, 0.5  # the short timeouts of the in-process server below
SLACK_S = 1.5  # how much later than its timeout a cut-off may come (a loaded 2-core machine)


@pytest.fixture(scope="module")
def limited(bc_artifact: Path, run_server: Any) -> Iterator[Any]:
    settings = Settings(
        artifact=bc_artifact,
        log_dir=None,
        header_timeout_s=HEADER_S,
        body_timeout_s=BODY_S,
        keep_alive_timeout_s=KEEP_ALIVE_S,
    )
    with run_server(settings) as srv:
        yield srv


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """Everything the server sends until it closes the connection, and when (None: still open after
    ``seconds``)."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic()
        received += chunk
    return received, None


def _read_response(sock: socket.socket, seconds: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (status, lower-cased headers, body by Content-Length), within ``seconds``."""
    data = b""
    deadline = time.monotonic() + seconds
    while b"\r\n\r\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([sock], [], [], left)[0], (
            f"no response within {seconds} s: {data!r}"
        )
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([sock], [], [], left)[0], "the response body did not arrive"
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-response"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("after_a_response", [False, True], ids=["new-connection", "keep-alive"])
def test_headers_sent_byte_by_byte_are_cut_off(limited: Any, after_a_response: bool) -> None:
    """About 120 header bytes at 20 a second would take 6 s; the server closes the connection after the
    header timeout, with a JSON 408 (the request had begun, and nothing of a response was half-written)."""
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    with socket.create_connection(_address(limited.url), timeout=5) as sock:
        if after_a_response:
            sock.sendall(_get("/v2/health/ready"))
            assert _read_response(sock)[0] == 200
        start = time.monotonic()
        received, closed_at = b"", None
        for byte in request.encode():
            if time.monotonic() - start > HEADER_S + SLACK_S:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            if select.select([sock], [], [], 0.05)[0]:
                received, closed_at = _read_until_closed(sock, SLACK_S)
                break
    assert closed_at is not None, (
        f"the connection was still open {time.monotonic() - start:.1f} s after the first header byte "
        f"(header timeout {HEADER_S} s)"
    )
    elapsed = closed_at - start
    print(f"byte-by-byte headers: closed after {elapsed:.2f} s (header timeout {HEADER_S} s)")
    assert HEADER_S * 0.8 <= elapsed <= HEADER_S + SLACK_S
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert "--header-timeout" in orjson.loads(body)["error"]
    assert httpx.get(f"{limited.url}/v2/health/ready").status_code == 200


def test_silent_connection_is_closed(limited: Any) -> None:
    """A connection that never sends a byte is closed (without an answer: there was no request)."""
    with socket.create_connection(_address(limited.url), timeout=5) as sock:
        start = time.monotonic()
        received, closed_at = _read_until_closed(sock, HEADER_S + SLACK_S)
    assert closed_at is not None, f"a silent connection was still open after {HEADER_S + SLACK_S} s"
    print(f"silent connection: closed after {closed_at - start:.2f} s")
    assert closed_at - start >= HEADER_S * 0.8 and received == b""


def test_idle_keep_alive_connection_is_closed(limited: Any) -> None:
    with socket.create_connection(_address(limited.url), timeout=5) as sock:
        sock.sendall(_get("/v2/health/live"))
        assert _read_response(sock)[0] == 200
        start = time.monotonic()
        received, closed_at = _read_until_closed(sock, KEEP_ALIVE_S + SLACK_S)
    assert closed_at is not None, f"an idle keep-alive connection was open after {KEEP_ALIVE_S + SLACK_S} s"
    print(f"idle keep-alive connection: closed after {closed_at - start:.2f} s")
    assert closed_at - start >= KEEP_ALIVE_S * 0.8 and received == b""


@pytest.mark.parametrize("sent", [0, 10])
def test_short_body_gets_408_and_the_connection_closes(limited: Any, sent: int) -> None:
    """Content-Length 1000, then ``sent`` bytes and silence: a JSON 408 naming the limit and its setting."""
    before = httpx.get(f"{limited.url}/metrics").text
    with socket.create_connection(_address(limited.url), timeout=5) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n".encode()
            + b'{"inputs": [{"name"'[:sent]
        )
        start = time.monotonic()
        status, headers, body = _read_response(sock, BODY_S + SLACK_S)
        elapsed = time.monotonic() - start
        rest, closed_at = _read_until_closed(sock, SLACK_S)
    print(f"short body ({sent} of 1000 bytes): {status} after {elapsed:.2f} s")
    assert status == 408 and headers["content-type"] == "application/json"
    message = orjson.loads(body)["error"]
    assert "--body-timeout" in message and f"{BODY_S:g} s" in message and f"{sent} of 1000" in message
    assert BODY_S * 0.8 <= elapsed <= BODY_S + SLACK_S
    assert headers.get("connection") == "close" and rest == b"" and closed_at is not None
    after = httpx.get(f"{limited.url}/metrics").text
    for name, labels in (
        ("mlci_requests_total", {"endpoint": "infer", "status": "408"}),
        ("mlci_limit_events_total", {"limit": "body_timeout"}),
    ):
        assert _sample(after, name, **labels) == _sample(before, name, **labels) + 1, name


def test_body_timeout_bounds_a_body_still_trickling_after_an_early_answer(limited: Any) -> None:
    """A body declared too large is answered 413 at once; if the client keeps trickling the rest (which the
    server reads and drops), the connection is closed at the body timeout instead of being held forever."""
    with socket.create_connection(_address(limited.url), timeout=5) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".encode())
        start = time.monotonic()
        assert _read_response(sock)[0] == 413
        closed_at = None
        while closed_at is None and time.monotonic() - start < BODY_S + SLACK_S:
            try:
                sock.sendall(b" " * 100)
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
            else:
                closed_at = _read_until_closed(sock, 0.05)[1]
    assert closed_at is not None, f"still open {BODY_S + SLACK_S} s after the 413"
    assert closed_at - start >= BODY_S * 0.8


def test_connection_cap_answers_json_503_and_keeps_serving_the_others(
    bc_artifact: Path, run_server: Any, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    cap = 4
    settings = Settings(artifact=bc_artifact, log_dir=None, max_connections=cap)
    body = orjson.dumps(make_body(bc_rows[:1]))
    infer = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with run_server(settings) as srv:
        address = _address(srv.url)
        held = [socket.create_connection(address, timeout=5) for _ in range(cap)]
        try:
            for sock in held:
                sock.sendall(_get("/v2/health/ready"))
                assert _read_response(sock)[0] == 200
            with socket.create_connection(address, timeout=5) as extra:
                extra.sendall(infer)
                status, headers, answer = _read_response(extra)
                rest, closed_at = _read_until_closed(extra, SLACK_S)
            assert status == 503 and headers["content-type"] == "application/json", (status, answer)
            message = orjson.loads(answer)["error"]
            print(f"over the cap: {status} {message}")
            assert f"{cap} connections" in message and "--max-connections" in message
            assert headers.get("connection") == "close" and closed_at is not None and rest == b""
            for sock in held:  # the connections within the cap are still served
                sock.sendall(infer)
                assert _read_response(sock)[0] == 200
            held.pop().close()  # a place frees up: a new connection is served again
            deadline = time.monotonic() + 5
            while True:
                with socket.create_connection(address, timeout=5) as again:
                    again.sendall(_get("/v2/health/ready"))
                    status = _read_response(again)[0]
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status == 200
            held[0].sendall(_get("/metrics"))
            metrics = _read_response(held[0])[2].decode()
        finally:
            for sock in held:
                sock.close()
    assert _sample(metrics, "mlci_limit_events_total", limit="max_connections") >= 1
    assert _sample(metrics, "mlci_requests_total", endpoint="other", status="503") >= 1


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP response (head and Content-Length body) from ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


async def _trickle(
    address: tuple[str, int], clients: int, size: int, chunk: int, pause: float, wait: float, on_sent: Any
) -> list[bytes | None]:
    """``clients`` connections each declare a ``size``-byte body and send all of it but the last byte,
    ``chunk`` bytes every ``pause`` seconds, stopping early if the server answers. ``on_sent`` runs once
    every client has stopped sending; then each waits up to ``wait`` seconds for its answer."""
    stopped = 0
    all_stopped = asyncio.Event()

    async def client() -> bytes | None:
        nonlocal stopped
        reader, writer = await asyncio.open_connection(*address)
        writer.write(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        answer = asyncio.ensure_future(_answer(reader))
        sent = 0
        try:
            while sent < size - 1 and not answer.done():
                n = min(chunk, size - 1 - sent)
                writer.write(b" " * n)
                await writer.drain()
                sent += n
                await asyncio.sleep(pause)
        except ConnectionError:
            pass
        stopped += 1
        if stopped == clients:
            all_stopped.set()
        try:
            return await asyncio.wait_for(answer, wait)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.wait_for(all_stopped.wait(), 60)
    on_sent()
    return await asyncio.gather(*tasks)


@pytest.mark.slow
def test_slow_clients_cannot_push_rss_beyond_the_body_budget(
    bc_artifact: Path, serve_subprocess: Any
) -> None:
    """64 clients each trickle (most of) a 4 MiB body into a real `mlci serve` with a 32 MiB budget for
    buffered bodies: 8 bodies fit and are held until the body timeout (408); the other 56 get a JSON 503 at
    once instead of growing the server's memory. Without the budget the server held all 256 MiB."""
    clients, size, budget, body_timeout = 64, 4 << 20, 32 << 20, 6.0
    margin = 32 << 20  # uvicorn's per-connection read buffers (64 KiB + a read each), allocator slack
    options = ("--no-log", "--max-buffered-bytes", str(budget), "--body-timeout", f"{body_timeout:g}")
    with serve_subprocess(bc_artifact, None, *options) as (proc, url):
        before = _vm(proc.pid, "VmRSS")
        seen: dict[str, int] = {}

        def measure() -> None:
            time.sleep(0.5)  # let the server take in what is in flight
            seen["rss"], seen["peak"] = _vm(proc.pid, "VmRSS"), _vm(proc.pid, "VmHWM")

        answers = asyncio.run(
            _trickle(_address(url), clients, size, 256 << 10, 0.05, body_timeout + 5, measure)
        )
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert proc.poll() is None
    mib = 1 << 20
    print(
        f"RSS of mlci serve: {before / mib:.0f} MiB before, {seen['rss'] / mib:.0f} MiB with every slow body "
        f"sent (peak {seen['peak'] / mib:.0f} MiB): +{(seen['peak'] - before) / mib:.0f} MiB against a "
        f"{budget / mib:.0f} MiB budget ({clients} clients x {size / mib:.0f} MiB)"
    )
    assert seen["peak"] - before <= budget + margin
    statuses = [int(a.split()[1]) if a else None for a in answers]
    assert None not in statuses, f"{statuses.count(None)} slow clients got no answer"
    assert sorted(statuses) == [408] * (budget // size) + [503] * (clients - budget // size)
    refused = next(a for a in answers if a is not None and a.startswith(b"HTTP/1.1 503"))
    assert b"--max-buffered-bytes" in refused and b"application/json" in refused


def test_body_budget_refuses_with_503_and_is_given_back(
    bc_artifact: Path, run_server: Any, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    """A slow body holds its whole Content-Length of the budget; a body that would not fit beside it gets a
    JSON 503 with Retry-After (declared or chunked), its connection stays usable, and the budget comes back
    when the slow body ends."""
    settings = Settings(
        artifact=bc_artifact, log_dir=None, max_body_bytes=2_000_000, max_buffered_bytes=2_000_000
    )
    row = orjson.dumps(make_body(bc_rows[:1]))
    big = b" " * (1_000_000 - len(row)) + row  # valid JSON: leading whitespace
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with run_server(settings) as srv:
        address = _address(srv.url)
        with socket.create_connection(address, timeout=5) as slow:
            slow.sendall(f"{head}Content-Length: 1500000\r\n\r\n".encode() + b" " * 1000)
            deadline = time.monotonic() + 5
            while srv.state.body_bytes != 1_500_000:
                assert time.monotonic() < deadline, "the slow body reserved nothing"
                time.sleep(0.01)
            with socket.create_connection(address, timeout=5) as other:
                other.sendall(f"{head}Content-Length: {len(big)}\r\n\r\n".encode() + big)
                status, headers, body = _read_response(other)
                assert status == 503 and headers["retry-after"] == "1", body
                message = orjson.loads(body)["error"]
                assert "--max-buffered-bytes" in message and "2000000" in message
                other.sendall(f"{head}Content-Length: {len(row)}\r\n\r\n".encode() + row)
                assert _read_response(other)[0] == 200  # the refused body was read and dropped
                chunked = b"".join(
                    b"%x\r\n%s\r\n" % (len(c), c)
                    for c in [big[i : i + 100_000] for i in range(0, len(big), 100_000)]
                )
                other.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunked + b"0\r\n\r\n")
                status, _, body = _read_response(other)
                assert status == 503 and "--max-buffered-bytes" in orjson.loads(body)["error"]
        deadline = time.monotonic() + 5  # the slow client left: its reservation is given back
        while srv.state.body_bytes != 0:
            assert time.monotonic() < deadline, f"{srv.state.body_bytes} bytes still reserved"
            time.sleep(0.01)
        response = httpx.post(f"{srv.url}{INFER}", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert _sample(metrics, "mlci_limit_events_total", limit="max_buffered_bytes") == 2
