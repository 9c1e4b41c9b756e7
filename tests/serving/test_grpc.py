"""The gRPC front end with real clients on 127.0.0.1: `tritonclient.grpc` unchanged (health,
metadata, raw tensors, FP16/INT64/BOOL, 16 concurrent clients), typed `contents` through the
V2 stub, answers equal to onnxruntime in-process and to the REST answer, the standard health
service, metrics and access log by protocol, auth, and the bad-request suite with its status
codes. The committed stubs equal a fresh generation.

Typed requests use tritonclient's own stub (the same wire format): the server's generated
module declares the same `inference.*` names, and one process cannot load both."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from tritonclient.grpc import service_pb2 as _pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from conftest import ROOT

# tritonclient ships its protobuf modules without type stubs: their classes are made at import.
pb: Any = _pb
# grpc's generated stubs declare HealthStub without the methods its __init__ adds.
health_pb2_grpc: Any = _health_pb2_grpc

MAX_BODY = 1 << 20          # the test servers' SERVEDMODEL_MAX_BODY_BYTES (and gRPC message limit)
ENV = {"SERVEDMODEL_MAX_BODY_BYTES": str(MAX_BODY), "SERVEDMODEL_LOG_LEVEL": "info"}


@pytest.fixture(scope="module")
def grpc_servers(contexts, start_server):
    return {kind: start_server(contexts[kind], ENV, grpc=True)
            for kind in ("mlp", "multi", "half", "flags")}


def reference(context: Path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(context / "model" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def stub(server) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(server.grpc_url)
    return pb_grpc.GRPCInferenceServiceStub(channel)


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", ROOT / "serving/v2grpc/generate.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    for rel in gen.GENERATED:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), \
            f"{rel} is stale: run make grpc-stubs"


def test_health_and_metadata(grpc_servers):
    server = grpc_servers["multi"]
    client = tg.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("test-multi")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "servedmodel" and "binary_tensor_data" in meta["extensions"]
    grpc_meta = client.get_model_metadata("test-multi", as_json=True)
    rest_meta = httpx.get(server.url + "/v2/models/test-multi").json()
    assert grpc_meta["name"] == rest_meta["name"] and grpc_meta["versions"] == rest_meta["versions"]
    assert grpc_meta["platform"] == rest_meta["platform"]
    for kind in ("inputs", "outputs"):
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in grpc_meta[kind]] == \
            rest_meta[kind]
    # the standard health service, as a Kubernetes gRPC probe calls it
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_url))
    for service in ("", "inference.GRPCInferenceService", "live"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_raw_infer_equals_onnxruntime_and_rest(grpc_servers, contexts):
    server = grpc_servers["mlp"]
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    client = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput("input", [5, 784], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("test-mlp", [inp], request_id="r-1")
    got = result.as_numpy("logits")
    assert result.get_response().id == "r-1"
    np.testing.assert_allclose(np.asarray(got), reference(contexts["mlp"], {"input": x})[0], rtol=1e-5,
                               atol=1e-6)
    rest = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    hin = th.InferInput("input", [5, 784], "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    np.testing.assert_array_equal(rest.infer("test-mlp", [hin]).as_numpy("logits"), got)


def test_typed_contents_fp32_int64(grpc_servers, contexts):
    server = grpc_servers["multi"]
    a = np.random.default_rng(1).random((3, 4), dtype=np.float32)
    b = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    req = pb.ModelInferRequest(model_name="test-multi", id="typed")
    ia = req.inputs.add(name="a", datatype="FP32", shape=[3, 4])
    ia.contents.fp32_contents.extend(a.ravel().tolist())
    ib = req.inputs.add(name="b", datatype="INT64", shape=[3, 4])
    ib.contents.int64_contents.extend(b.ravel().tolist())
    req.outputs.add(name="sum")
    resp = stub(server).ModelInfer(req)
    assert not resp.raw_output_contents                   # typed in, typed out
    assert [o.name for o in resp.outputs] == ["sum"] and list(resp.outputs[0].shape) == [3, 4]
    got = np.array(resp.outputs[0].contents.fp32_contents, np.float32).reshape(3, 4)
    np.testing.assert_array_equal(got, reference(contexts["multi"], {"a": a, "b": b})[0])
    # the same through tritonclient (raw both ways) and REST JSON
    client = tg.InferenceServerClient(server.grpc_url)
    ta, tb = tg.InferInput("a", [3, 4], "FP32"), tg.InferInput("b", [3, 4], "INT64")
    ta.set_data_from_numpy(a)
    tb.set_data_from_numpy(b)
    raw = client.infer("test-multi", [ta, tb])
    np.testing.assert_array_equal(raw.as_numpy("sum"), got)
    np.testing.assert_array_equal(raw.as_numpy("a_copy"), a)
    body = {"inputs": [{"name": "a", "shape": [3, 4], "datatype": "FP32", "data": a.tolist()},
                       {"name": "b", "shape": [3, 4], "datatype": "INT64", "data": b.tolist()}]}
    rest = httpx.post(server.url + "/v2/models/test-multi/infer", json=body).json()
    np.testing.assert_array_equal(np.array(rest["outputs"][0]["data"], np.float32).reshape(3, 4),
                                  got)


def test_fp16_raw(grpc_servers, contexts):
    server = grpc_servers["half"]
    h = np.array([[1.5, -2.0], [0.25, 8.0]], np.float16)
    client = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput("h", [2, 2], "FP16")
    inp.set_data_from_numpy(h)
    got = client.infer("test-half", [inp]).as_numpy("y")
    np.testing.assert_array_equal(got, reference(contexts["half"], {"h": h})[0])


def test_bool_and_int64_raw_and_typed(grpc_servers, contexts):
    server = grpc_servers["flags"]
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    m = np.array([[True, False, True], [False, False, True]])
    want = reference(contexts["flags"], {"x": x, "m": m})
    client = tg.InferenceServerClient(server.grpc_url)
    ix, im = tg.InferInput("x", [2, 3], "FP32"), tg.InferInput("m", [2, 3], "BOOL")
    ix.set_data_from_numpy(x)
    im.set_data_from_numpy(m)
    res = client.infer("test-flags", [ix, im])
    for name, expected in zip(("y", "nm", "n"), want):
        got = res.as_numpy(name)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    req = pb.ModelInferRequest(model_name="test-flags")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
        x.ravel().tolist())
    req.inputs.add(name="m", datatype="BOOL", shape=[2, 3]).contents.bool_contents.extend(
        m.ravel().tolist())
    resp = stub(server).ModelInfer(req)
    typed = {o.name: o for o in resp.outputs}
    np.testing.assert_array_equal(np.array(typed["nm"].contents.bool_contents).reshape(2, 3),
                                  want[1])
    np.testing.assert_array_equal(np.array(typed["n"].contents.int64_contents).reshape(2, 3),
                                  want[2])


def test_16_concurrent_clients(grpc_servers):
    server = grpc_servers["mlp"]
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from contexts import mlp_weights

    w, b = mlp_weights()
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = tg.InferenceServerClient(server.grpc_url)
        for _ in range(15):
            n = int(rng.integers(1, 4))
            x = rng.random((n, 784), dtype=np.float32)
            inp = tg.InferInput("input", [n, 784], "FP32")
            inp.set_data_from_numpy(x)
            try:
                got = client.infer("test-mlp", [inp]).as_numpy("logits")
                if not np.allclose(np.asarray(got), x @ w + b, rtol=1e-4, atol=1e-4):
                    errors.append("wrong rows")
            except InferenceServerException as e:
                errors.append(str(e))
        client.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_metrics_and_access_log_by_protocol(grpc_servers):
    server = grpc_servers["mlp"]
    client = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 784), np.float32))
    client.infer("test-mlp", [inp])
    with pytest.raises(InferenceServerException):
        client.infer("test-mlp", [inp], outputs=[tg.InferRequestedOutput("nope")])
    httpx.post(server.url + "/v2/models/test-mlp/infer", content=b"{")
    text = httpx.get(server.url + "/metrics").text
    for line in ('servedmodel_requests_total{model="test-mlp",protocol="grpc",outcome="success"}',
                 'servedmodel_requests_total{model="test-mlp",protocol="rest",'
                 'outcome="client_error"}',
                 'servedmodel_request_failures_total{model="test-mlp",protocol="grpc",'
                 'reason="bad_request"}',
                 'servedmodel_request_duration_seconds_count{model="test-mlp",protocol="grpc"}'):
        assert line in text, line
    time.sleep(0.5)                                 # access logs are flushed every 0.25 s
    lines = [json.loads(x) for x in server.output().splitlines() if '"protocol":"grpc"' in x]
    infer = [x for x in lines if x["path"].endswith("/ModelInfer")]
    assert any(x["status"] == 200 and x["rows"] == 1 for x in infer)
    assert any(x.get("grpc_code") == "INVALID_ARGUMENT" for x in infer)


def test_bearer_auth_in_metadata(contexts, start_server, tmp_path):
    server = start_server(contexts["mlp"], {"SERVEDMODEL_AUTH_TOKEN": "s3cret"}, grpc=True)
    client = tg.InferenceServerClient(server.grpc_url)
    assert client.is_server_live()                  # probes stay open, as on REST
    inp = tg.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 784), np.float32))
    for headers, words in ((None, "missing bearer token"),
                           ({"authorization": "Bearer wrong"}, "invalid bearer token")):
        with pytest.raises(InferenceServerException) as e:
            client.infer("test-mlp", [inp], headers=headers)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED" and words in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("other")         # no probing model names without a token
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    res = client.infer("test-mlp", [inp], headers={"authorization": "Bearer s3cret"})
    assert res.as_numpy("logits").shape == (1, 10)


# -- the bad-request suite -------------------------------------------------------------------

def _mlp(shape=(1, 784), datatype="FP32", raw: bytes | None = None, name="input", **kw):
    req = pb.ModelInferRequest(model_name=kw.pop("model", "test-mlp"), **kw)
    req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    n = int(np.prod(shape)) if all(d >= 0 for d in shape) else 1
    req.raw_input_contents.append(raw if raw is not None else b"\0" * (4 * n))
    return req


def _typed(values, field="fp32_contents", shape=(1, 784), datatype="FP32", model="test-mlp",
           name="input"):
    req = pb.ModelInferRequest(model_name=model)
    getattr(req.inputs.add(name=name, datatype=datatype, shape=list(shape)).contents,
            field).extend(values)
    return req


def _both():
    req = _mlp()
    req.inputs[0].contents.fp32_contents.extend([0.5] * 784)
    return req


def _multi(a_rows=1, b_rows=1, with_b=True):
    req = pb.ModelInferRequest(model_name="test-multi")
    req.inputs.add(name="a", datatype="FP32", shape=[a_rows, 4])
    req.raw_input_contents.append(b"\0" * (16 * a_rows))
    if with_b:
        req.inputs.add(name="b", datatype="INT64", shape=[b_rows, 4])
        req.raw_input_contents.append(b"\0" * (32 * b_rows))
    return req


def _with_output(req, name, **params):
    out = req.outputs.add(name=name)
    for k, v in params.items():
        out.parameters[k].int64_param = v
    return req


def _duplicate():
    req = _mlp()
    req.inputs.add(name="input", datatype="FP32", shape=[1, 784])
    req.raw_input_contents.append(b"\0" * 3136)
    return req


def _no_data():
    req = pb.ModelInferRequest(model_name="test-mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 784])
    return req


INVALID = grpc.StatusCode.INVALID_ARGUMENT
# (id, server, request builder, status code, words the message must contain)
BAD = [
    ("wrong-rank", "mlp", lambda: _mlp(shape=(784,)), INVALID, "has rank 1"),
    ("wrong-fixed-dim", "mlp", lambda: _mlp(shape=(1, 785)), INVALID,
     "does not match the model's [-1, 784]"),
    ("wrong-datatype", "mlp", lambda: _mlp(datatype="INT32"), INVALID, "the model takes FP32"),
    ("unknown-datatype", "mlp", lambda: _mlp(datatype="FLOAT"), INVALID, "not a V2 datatype"),
    ("raw-and-typed", "mlp", _both, INVALID, "send one or the other"),
    ("raw-count-mismatch", "multi", lambda: (lambda r: (r.raw_input_contents.append(b"x"), r)[1])(
        _multi()), INVALID, "raw_input_contents has 3 entries but the request has 2 inputs"),
    ("raw-length-mismatch", "mlp", lambda: _mlp(raw=b"\0" * 100), INVALID,
     "raw_input_contents[0] has 100 bytes"),
    ("typed-count-mismatch", "mlp", lambda: _typed([0.5] * 783), INVALID,
     "needs 784 elements, contents.fp32_contents has 783"),
    ("typed-wrong-field", "mlp", lambda: _typed([1] * 784, field="int64_contents"), INVALID,
     "goes in contents.fp32_contents"),
    ("fp16-typed", "half", lambda: _typed([1.0, 2.0], shape=(1, 2), datatype="FP16",
                                          model="test-half", name="h"), INVALID,
     "FP16 cannot be sent as typed contents; use raw_input_contents"),
    ("unknown-input", "mlp", lambda: _mlp(name="extra"), INVALID, "unknown input 'extra'"),
    ("duplicate-input", "mlp", _duplicate, INVALID, "given twice"),
    ("missing-input", "multi", lambda: _multi(with_b=False), INVALID, "missing input(s) b"),
    ("no-data", "mlp", _no_data, INVALID, "neither typed contents nor"),
    ("unknown-output", "mlp", lambda: _with_output(_mlp(), "probs"), INVALID,
     "unknown output 'probs'"),
    ("classification", "mlp", lambda: _with_output(_mlp(), "logits", classification=3), INVALID,
     "classification"),
    ("batch-over-max", "mlp", lambda: _mlp(shape=(33, 784)), INVALID, "over max_batch_size 32"),
    ("batch-dims-differ", "multi", lambda: _multi(1, 2), INVALID,
     "differs from the other inputs"),
    ("no-inputs", "mlp", lambda: pb.ModelInferRequest(model_name="test-mlp"), INVALID,
     "non-empty list"),
    ("floats-for-bool", "flags", lambda: _typed([1.0] * 3, shape=(1, 3), model="test-flags",
                                                name="m", datatype="BOOL"), INVALID,
     "goes in contents.bool_contents"),
    ("unknown-model", "mlp", lambda: _mlp(model="nope"), grpc.StatusCode.NOT_FOUND,
     "unknown model 'nope'"),
    ("unknown-version", "mlp", lambda: _mlp(model_version="999"), grpc.StatusCode.NOT_FOUND,
     "unknown version '999'"),
    ("invalid-model-name", "mlp", lambda: _mlp(model="../etc"), INVALID, "invalid model name"),
    ("oversize-message", "mlp", lambda: _mlp(raw=b"\0" * (MAX_BODY + 10)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


def test_at_least_15_bad_request_cases():
    assert len(BAD) >= 15


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request(grpc_servers, case):
    _, kind, build, code, words = case
    server = grpc_servers[kind]
    with pytest.raises(grpc.RpcError) as e:
        stub(server).ModelInfer(build(), timeout=10)
    assert e.value.code() == code, (e.value.code(), e.value.details())
    assert words in e.value.details(), e.value.details()
    assert "Traceback" not in (e.value.details() or "")
    assert tg.InferenceServerClient(server.grpc_url).is_server_live()      # still serving


# -- shedding and drain ----------------------------------------------------------------------

def _slow_request(x: np.ndarray):
    req = pb.ModelInferRequest(model_name="test-slow")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 512])
    req.raw_input_contents.append(x.tobytes())
    return req


def _call(server, x, results, lock, ready_stub=None, barrier=None):
    try:
        client = ready_stub or stub(server)
        if barrier is not None:
            barrier.wait(10)
        resp = client.ModelInfer(_slow_request(x), timeout=30)
        ok = np.array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), x)
        outcome = ("OK", ok, "")
    except grpc.RpcError as e:
        outcome = (e.code().name, True, e.details())
    with lock:
        results.append(outcome)


@pytest.mark.slow
def test_shedding_unavailable_and_sigterm_drains_grpc(tmp_path, start_server):
    """Over the queue bound: UNAVAILABLE at once. On SIGTERM: readiness off (health
    NOT_SERVING, ServerReady false) while accepted calls finish with their outputs, new calls
    get UNAVAILABLE, and the process exits 0 within the drain time."""
    import signal

    from contexts import write_context

    ctx = write_context(tmp_path / "slow", "slower", name="test-slow", max_batch_size=4, warmup=(1,))
    server = start_server(ctx, {"SERVEDMODEL_MAX_BATCH_SIZE": "1",
                                "SERVEDMODEL_MAX_QUEUE_SIZE": "3",
                                "SERVEDMODEL_DRAIN_SECONDS": "20"}, grpc=True)
    rng = np.random.default_rng(7)
    lock = threading.Lock()

    # 1. shedding: 10 calls at once, 1 runs and 3 queue
    results: list = []
    threads = [threading.Thread(target=_call, args=(server, rng.random(512, dtype=np.float32),
                                                    results, lock)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = [r[0] for r in results]
    assert codes.count("UNAVAILABLE") >= 1 and codes.count("OK") >= 1, codes
    assert all(ok for _, ok, _ in results), "a call answered OK had wrong outputs"
    assert all("overloaded" in d for c, _, d in results if c == "UNAVAILABLE")
    text = httpx.get(server.url + "/metrics").text
    assert 'protocol="grpc",reason="queue_full"' in text

    # 2. drain: calls accepted (one running, others queued), then SIGTERM
    results = []
    # Connected channels and a barrier: the 3 calls reach the server together, so they overlap
    # even when the model is fast (a fresh channel's handshake would otherwise space them out
    # by more than one call's run time on an idle machine). 3, not 4: arriving together, all
    # of them may be queued before the worker takes the first, and the queue holds 3.
    channels = [grpc.insecure_channel(server.grpc_url) for _ in range(3)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)
    barrier = threading.Barrier(3)
    inflight = [threading.Thread(target=_call, args=(server, rng.random(512, dtype=np.float32), results, lock,
                                                     pb_grpc.GRPCInferenceServiceStub(channel), barrier))
                for channel in channels]
    for t in inflight:
        t.start()
    deadline = time.monotonic() + 10

    def accepted() -> int:
        text = httpx.get(server.url + "/metrics").text
        return int(text.split('servedmodel_inflight_requests{model="test-slow"} ')[1].split()[0])

    while (n_accepted := accepted()) < 2:     # at least one running and one waiting behind it
        assert time.monotonic() < deadline, "the calls were never accepted"
        time.sleep(0.005)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_url))
    status = None
    while time.monotonic() - t_term < 1.0:
        status = health.Check(health_pb2.HealthCheckRequest(service="")).status
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        time.sleep(0.02)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="live")).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert not stub(server).ServerReady(pb.ServerReadyRequest()).ready
    late: list = []
    _call(server, rng.random(512, dtype=np.float32), late, lock)
    assert late[0][0] == "UNAVAILABLE" and "shutting down" in late[0][2], late
    for t in inflight:
        t.join(30)
    # Every call accepted before SIGTERM finishes with its outputs; one that had not reached
    # the server yet (on a busy machine) is refused like any new call.
    codes = [r[0] for r in results]
    assert len(results) == 3 and codes.count("OK") >= n_accepted, results
    assert all(ok for _, ok, _ in results)
    assert all(c == "OK" or (c == "UNAVAILABLE" and "shutting down" in d)
               for c, _, d in results), results
    server.proc.wait(25)
    assert server.proc.returncode == 0, server.output()[-2000:]
    assert time.monotonic() - t_term < 20


def test_grpc_port_flag_and_clean_exit(contexts):
    """`python -m serving --grpc-port G` (the flag, not the variable) serves gRPC; SIGTERM on
    an idle server exits 0."""
    import signal
    import subprocess
    import sys

    from conftest import free_port

    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--context", str(contexts["mlp"]),
                             "--host", "127.0.0.1", "--port", str(port), "--grpc-port",
                             str(grpc_port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "SERVEDMODEL_LOG_LEVEL": "warning"})
    try:
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        assert client.is_model_ready("test-mlp")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_grpc_port_in_use_refuses_to_start(contexts):
    import socket

    from test_startup import run_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(contexts["mlp"], {"SERVEDMODEL_GRPC_PORT": str(port)},
                            args=("--host", "127.0.0.1"))
    assert result.returncode != 0
    assert f"gRPC cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr[-2000:]


def test_grpc_connection_limits_follow_the_rest_settings(contexts, start_server):
    """The REST connection limits hold on gRPC too: metadata over SERVEDMODEL_MAX_HEADER_BYTES
    is refused and the server stays live; a connection idle for SERVEDMODEL_KEEP_ALIVE_SECONDS
    is closed by the server (the client's channel leaves READY by itself)."""
    server = start_server(contexts["mlp"], {**ENV, "SERVEDMODEL_MAX_HEADER_BYTES": "4096",
                                            "SERVEDMODEL_KEEP_ALIVE_SECONDS": "1"}, grpc=True)
    with grpc.insecure_channel(server.grpc_url) as channel:
        live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive
        assert live(pb.ServerLiveRequest(), timeout=10).live
        assert live(pb.ServerLiveRequest(), metadata=[("x-small", "a" * 3000)], timeout=10).live
        for _ in range(10):     # grpc's own default (8 KiB soft, 16 KiB hard) would let it in
            with pytest.raises(grpc.RpcError) as e:
                live(pb.ServerLiveRequest(), metadata=[("x-big", "a" * 6000)], timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
            assert "over the limit of 4096 bytes (SERVEDMODEL_MAX_HEADER_BYTES)" in \
                (e.value.details() or ""), e.value.details()
        assert live(pb.ServerLiveRequest(), timeout=10).live        # still serving
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and grpc.ChannelConnectivity.IDLE not in states[1:]:
            time.sleep(0.2)
        channel.unsubscribe(states.append)
    assert states[0] == grpc.ChannelConnectivity.READY
    # The server's GOAWAY after ~1 s idle takes the channel out of READY, without a call.
    assert grpc.ChannelConnectivity.IDLE in states[1:], states


def test_a_response_over_the_message_limit_is_refused(tmp_path, start_server):
    """The message limit holds for answers too: flags' raw answer is 13 bytes an element
    against 5 in, so 200 rows fit in 4 KiB and their answer does not."""
    from contexts import write_context

    ctx = write_context(tmp_path / "flags", "flags", name="test-flags", max_batch_size=256)
    server = start_server(ctx, {"SERVEDMODEL_MAX_BODY_BYTES": "4096",
                                "SERVEDMODEL_LOG_LEVEL": "info"}, grpc=True)
    req = pb.ModelInferRequest(model_name="test-flags")
    req.inputs.add(name="x", datatype="FP32", shape=[200, 3])
    req.inputs.add(name="m", datatype="BOOL", shape=[200, 3])
    req.raw_input_contents.extend([np.ones((200, 3), np.float32).tobytes(),
                                   np.ones((200, 3), np.bool_).tobytes()])
    with pytest.raises(grpc.RpcError) as e:
        stub(server).ModelInfer(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = e.value.details() or ""
    assert "the response of" in details and "larger than max (4096 bytes" in details
    text = httpx.get(server.url + "/metrics").text
    assert 'protocol="grpc",reason="response_too_large"' in text
    small = pb.ModelInferRequest(model_name="test-flags")       # and the next call is served
    small.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    small.inputs.add(name="m", datatype="BOOL", shape=[1, 3])
    small.raw_input_contents.extend([np.ones((1, 3), np.float32).tobytes(),
                                     np.ones((1, 3), np.bool_).tobytes()])
    assert len(stub(server).ModelInfer(small, timeout=10).raw_output_contents) == 3
