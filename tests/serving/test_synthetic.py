"""Synthetic traffic (smoke tests, post-deploy checks) is marked by its client and logged flagged.

A request with ``X-MLCI-Traffic: synthetic`` is answered like any other, written to the prediction log
with ``"synthetic": true`` (every other record says ``false``, so a record without the key is one written
before marking existed), and counted apart from the predictions in ``/metrics``.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from mlci.serving.predlog import read_lines

INFER = "/v2/models/breast-cancer/infer"
TRAFFIC_HEADER = "X-MLCI-Traffic"  # spelled out: the wire contract, not whatever the constant says
SYNTHETIC_HEADERS = {TRAFFIC_HEADER: "synthetic"}


def _logged(server: Any, request_id: str) -> dict[str, Any]:
    server.state.log.flush()
    [record] = [r for r in read_lines(server.log_dir) if r["id"] == request_id]
    return record


def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_marked_requests_are_logged_flagged_and_the_rest_as_real(
    bc_server: Any, client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    real = client.post(INFER, json=make_body(bc_rows[:3], id="real-1"))
    marked = client.post(INFER, json=make_body(bc_rows[:3], id="smoke-1"), headers=SYNTHETIC_HEADERS)
    assert real.status_code == marked.status_code == 200
    assert marked.json()["outputs"] == real.json()["outputs"]  # answered exactly alike
    assert _logged(bc_server, "real-1")["synthetic"] is False
    assert _logged(bc_server, "smoke-1")["synthetic"] is True


def test_the_mark_is_read_in_any_case(
    bc_server: Any, client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    headers = {TRAFFIC_HEADER.upper(): "Synthetic"}  # header names and the value: any case
    assert (
        client.post(INFER, json=make_body(bc_rows[:1], id="smoke-case"), headers=headers).status_code == 200
    )
    assert _logged(bc_server, "smoke-case")["synthetic"] is True


@pytest.mark.parametrize("value", ["real", "smoke", "", "synthetic, synthetic"])
def test_an_unknown_mark_is_refused_naming_the_header(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any, value: str
) -> None:
    response = client.post(INFER, json=make_body(bc_rows[:1]), headers={TRAFFIC_HEADER: value})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "X-MLCI-Traffic" in message and "'synthetic'" in message and "leave the header out" in message


def test_synthetic_rows_are_counted_apart_from_predictions(
    client: httpx.Client, bc_rows: list[dict[str, float]], make_body: Any
) -> None:
    before = client.get("/metrics").text
    client.post(INFER, json=make_body(bc_rows[:5]), headers=SYNTHETIC_HEADERS)
    client.post(INFER, json=make_body(bc_rows[:2]))
    after = client.get("/metrics").text
    assert _value(after, "mlci_synthetic_rows_total{") - _value(before, "mlci_synthetic_rows_total{") == 5
    assert _value(after, "mlci_predictions_total{") - _value(before, "mlci_predictions_total{") == 2
    assert _value(after, "mlci_batch_rows_count{") - _value(before, "mlci_batch_rows_count{") == 1
    ok = 'mlci_requests_total{digest="sha256:'  # both are HTTP requests all the same
    assert _value(after, ok) - _value(before, ok) >= 2


def test_tritonclient_marks_its_requests_with_a_header(
    bc_server: Any, bc_rows: list[dict[str, float]]
) -> None:
    """tritonclient (and kserve's InferenceRESTClient) send extra headers per request: that is the mark."""
    with triton.InferenceServerClient(bc_server.url.removeprefix("http://")) as tc:
        inputs = []
        for name in bc_rows[0]:
            tensor = triton.InferInput(name, [4, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[r[name]] for r in bc_rows[:4]], dtype=np.float32))
            inputs.append(tensor)
        tc.infer("breast-cancer", inputs, request_id="triton-smoke", headers=SYNTHETIC_HEADERS)
        tc.infer("breast-cancer", inputs, request_id="triton-real")
    assert _logged(bc_server, "triton-smoke")["synthetic"] is True
    assert _logged(bc_server, "triton-real")["synthetic"] is False
