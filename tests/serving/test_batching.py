"""Dynamic batching: concurrent requests share one onnxruntime call and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlci.serving.batching import MicroBatcher
from mlci.serving.errors import InvalidInput
from mlci.serving.protocol import InferRequest
from mlci.serving.runtime import ModelRuntime


def request(matrix: np.ndarray) -> InferRequest:
    return InferRequest(
        None, matrix.shape[1], np.ascontiguousarray(matrix, dtype=np.float32), {}, {}, None, False
    )


class Recorder:
    """A predict function that remembers the rows of every call and refuses rows holding -1."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, numeric: np.ndarray | None, categorical: dict[str, np.ndarray]) -> Any:
        assert numeric is not None
        self.calls.append(numeric.shape[1])
        if (numeric == -1).any():
            raise InvalidInput("row with -1")
        return [numeric.sum(axis=0), numeric.T.copy()], np.arange(numeric.shape[1])


async def gather(batcher: MicroBatcher, requests: list[InferRequest]) -> list[Any]:
    return await asyncio.gather(*(batcher.predict(r) for r in requests), return_exceptions=True)


def test_one_loop_turn_shares_one_call_and_every_request_gets_its_rows() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=256)
    matrices = [np.full((3, rows), float(k)) for k, rows in enumerate([1, 2, 1, 4], start=1)]
    results = asyncio.run(gather(batcher, [request(m) for m in matrices]))
    assert recorder.calls == [8] and batcher.batched == 4
    for matrix, (outputs, index) in zip(matrices, results, strict=True):
        np.testing.assert_array_equal(outputs[0], matrix.sum(axis=0))
        np.testing.assert_array_equal(outputs[1], matrix.T)
        assert len(index) == matrix.shape[1]
    assert [list(i) for _, i in results] == [[0], [1, 2], [3], [4, 5, 6, 7]]  # slices of the shared call


def test_a_lone_request_and_large_requests_run_alone() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=4)
    asyncio.run(gather(batcher, [request(np.ones((2, 1)))]))
    asyncio.run(gather(batcher, [request(np.ones((2, 9))), request(np.ones((2, 1)))]))
    assert recorder.calls == [1, 9, 1] and batcher.batched == 0


def test_a_full_batch_runs_and_the_next_one_starts() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=4)
    asyncio.run(gather(batcher, [request(np.ones((2, 2))) for _ in range(5)]))
    assert recorder.calls == [4, 4, 2]


def test_no_batching_when_disabled() -> None:
    recorder = Recorder()
    asyncio.run(gather(MicroBatcher(recorder, max_rows=0), [request(np.ones((2, 1))) for _ in range(3)]))
    assert recorder.calls == [1, 1, 1]


def test_a_failing_request_gets_its_error_and_the_others_their_answer() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder)
    bad = np.full((2, 1), -1.0)
    results = asyncio.run(gather(batcher, [request(np.ones((2, 1))), request(bad), request(np.ones((2, 2)))]))
    assert isinstance(results[1], InvalidInput)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert recorder.calls == [4, 1, 1, 2]  # the shared call failed; each ran alone


def test_a_request_whose_client_left_is_skipped() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder)

    async def scenario() -> Any:
        gone = asyncio.ensure_future(batcher.predict(request(np.ones((2, 3)))))
        stays = asyncio.ensure_future(batcher.predict(request(np.ones((2, 1)))))
        await asyncio.sleep(0)  # both are queued
        gone.cancel()
        return await stays

    outputs, _ = asyncio.run(scenario())
    assert recorder.calls == [1] and len(outputs[0]) == 1


def test_batched_answers_match_single_row_answers_of_the_real_model(bc_artifact: Path) -> None:
    runtime = ModelRuntime.load(bc_artifact)
    rng = np.random.default_rng(4)
    rows = [np.abs(rng.normal(size=(30, 1)) * 20).astype(np.float32) for _ in range(24)]
    rows[3][5, 0] = np.nan  # a missing value, imputed, inside a shared call
    alone = [runtime.predict_indexed(r, {}) for r in rows]
    batcher = MicroBatcher(runtime.predict_indexed)
    together = asyncio.run(gather(batcher, [request(r) for r in rows]))
    assert batcher.calls == 1 and batcher.batched == 24
    for (want, want_index), (got, got_index) in zip(alone, together, strict=True):
        assert got[0].tolist() == want[0].tolist() and got_index.tolist() == want_index.tolist()  # labels
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=0)  # probabilities, to the last bits


def test_freeze_startup_objects_freezes_the_heap() -> None:
    """In a child process: gc.freeze would keep this test process's garbage forever."""
    code = "import gc; from mlci.serving.server import freeze_startup_objects as f; f(); print(gc.get_freeze_count())"
    frozen = int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert frozen > 10_000


def test_concurrent_http_requests_share_calls(
    bc_server: Any, bc_artifact: Path, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    import httpx

    async def burst() -> list[Any]:
        async with httpx.AsyncClient(base_url=bc_server.url) as client:
            bodies = [make_body([row]) for row in bc_rows[:32]]
            return await asyncio.gather(
                *(client.post("/v2/models/breast-cancer/infer", json=b) for b in bodies)
            )

    def calls() -> tuple[float, float]:
        text = httpx.get(bc_server.url + "/metrics").text
        count = next(
            line for line in text.splitlines() if line.startswith("mlci_onnxruntime_batch_rows_count")
        )
        total = next(line for line in text.splitlines() if line.startswith("mlci_onnxruntime_batch_rows_sum"))
        return float(count.rsplit(" ", 1)[1]), float(total.rsplit(" ", 1)[1])

    before = calls()
    for _ in range(5):  # the server decides how many arrive in one loop turn; over 5 bursts some are shared
        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses)
    after = calls()
    requests, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 5 * 32 and requests < rows  # fewer onnxruntime calls than requests
    runtime = ModelRuntime.load(bc_artifact)
    for row, response in zip(bc_rows[:32], responses, strict=True):  # each client got its own row's answer
        want = runtime.run({k: np.array([[v]], dtype=np.float32) for k, v in row.items()})
        assert orjson.loads(response.content)["outputs"][0]["data"] == want[0].tolist()
