"""A request whose client went away while it waited in the queue is dropped, not computed:
over REST its connection closed, over gRPC its call was cancelled. Each is counted as
`servedmodel_request_failures_total{reason="abandoned"}`, and the server goes on serving."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

# tritonclient's copy of the V2 messages, as test_grpc.py uses: one process cannot load two
# copies of the same proto package ("inference").
from tritonclient.grpc import service_pb2 as _pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from contexts import write_context
from serverkit import metric_sum

# tritonclient ships its protobuf modules without type stubs: their classes are made at import.
pb: Any = _pb

NAME = "test-slower"
INFER = f"/v2/models/{NAME}/infer"
WIDTH = 512
#: Rows of the request that keeps the model busy: about a second on 2 CPUs (slower_model is
#: ~2 GFLOP a row), long enough to queue and abandon requests behind it on any machine.
LONG_ROWS = 32
ABANDONED = 3


def _body(rows: int) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [rows, WIDTH], "datatype": "FP32",
                                   "data": [0.5] * (rows * WIDTH)}]}).encode()


def _rows_computed(server) -> float:
    return metric_sum(httpx.get(server.url + "/metrics").text, "servedmodel_batch_size_sum{")


def _abandoned(server, protocol: str) -> float:
    return metric_sum(httpx.get(server.url + "/metrics").text,
                   f'servedmodel_request_failures_total{{model="{NAME}",protocol="{protocol}",'
                   f'reason="abandoned"}}')


def _inflight(server) -> float:
    return metric_sum(httpx.get(server.url + "/metrics").text,
                   f'servedmodel_inflight_requests{{model="{NAME}"}}')


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def slower_server(tmp_path_factory, start_server):
    ctx = write_context(tmp_path_factory.mktemp("abandoned") / "slower", "slower", name=NAME,
                        max_batch_size=LONG_ROWS, warmup=(1,))
    return start_server(ctx, grpc=True)


class _LongRequest(threading.Thread):
    outcome: list[int]  # the long request's status, once it ended


def _start_long_request(server) -> _LongRequest:
    """One request of LONG_ROWS rows, answered 200 (checked when joined)."""
    outcome: list[int] = []

    def run() -> None:
        outcome.append(httpx.post(server.url + INFER, content=_body(LONG_ROWS),
                                  timeout=120).status_code)

    thread = _LongRequest(target=run)
    thread.outcome = outcome
    thread.start()
    _wait_for(lambda: _inflight(server) >= 1, "the long request to start")
    return thread


def _abandon_behind_a_long_request(server, queue, abandon, what: str) -> None:
    """With the long request running: `queue()` requests, wait until the server holds them,
    `abandon()` them while the long one still runs, and let it finish; then check that only
    its rows were computed."""
    rows_before = _rows_computed(server)
    long_request = _start_long_request(server)
    queue()
    _wait_for(lambda: _inflight(server) >= 1 + ABANDONED, f"the {what} to be queued")
    abandon()
    # Abandoned while the long request still ran, so they were still waiting in the queue.
    assert long_request.is_alive(), f"the long request finished before the {what} were abandoned"
    long_request.join(120)
    assert long_request.outcome == [200]
    _wait_for(lambda: _inflight(server) == 0, "the queue to empty")
    assert _rows_computed(server) - rows_before == LONG_ROWS        # none of the abandoned


def test_a_queued_rest_request_whose_connection_closed_is_not_computed(slower_server):
    server = slower_server
    abandoned_before = _abandoned(server, "rest")
    request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(_body(1))}\r\n\r\n").encode() + _body(1)
    sockets: list[socket.socket] = []

    def queue() -> None:
        for _ in range(ABANDONED):
            sockets.append(socket.create_connection(("127.0.0.1", server.port)))
            sockets[-1].sendall(request)

    def abandon() -> None:
        for s in sockets:
            s.close()

    _abandon_behind_a_long_request(server, queue, abandon, "requests")
    assert _abandoned(server, "rest") - abandoned_before == ABANDONED
    after = httpx.post(server.url + INFER, content=_body(1), timeout=60)
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [0.5] * WIDTH


def test_a_queued_grpc_call_that_was_cancelled_is_not_computed(slower_server):
    server = slower_server
    abandoned_before = _abandoned(server, "grpc")
    channel = grpc.insecure_channel(server.grpc_url)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    row = np.full((1, WIDTH), 0.5, dtype=np.float32)
    message = pb.ModelInferRequest(
        model_name=NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, WIDTH])],
        raw_input_contents=[row.tobytes()])
    calls: list = []

    def queue() -> None:
        calls.extend(stub.ModelInfer.future(message, timeout=120) for _ in range(ABANDONED))

    def abandon() -> None:
        for call in calls:
            call.cancel()

    _abandon_behind_a_long_request(server, queue, abandon, "calls")
    assert all(call.cancelled() for call in calls)
    _wait_for(lambda: _abandoned(server, "grpc") - abandoned_before == ABANDONED,
              "the cancelled calls to be counted", timeout=5)
    answer = stub.ModelInfer(message, timeout=60)
    assert np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).tolist() == \
        [0.5] * WIDTH
    channel.close()
