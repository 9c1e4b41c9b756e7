"""The audit stream under load: exactly one record per request sent to the model routes, REST
and gRPC, answered or refused (401, 403-free here, 400, 404, 413, 503), with the caller, the
trace id, and nothing secret; written in full when the server stops on SIGTERM."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from authkit import clients_file, sha256_hex
from conftest import ROOT
from servedmodel.serving.audit import trace_id
from serverkit import ServerProcess

pytestmark = pytest.mark.slow

TOKENS = {"alice": ["alice-token-0001", "alice-token-0002"], "bob": ["bob-token-0001"]}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BODY = json.dumps({"inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32",
                               "data": [7.0625] * 1568}]})


def test_trace_id_is_read_only_from_a_valid_traceparent():
    assert trace_id(f"00-{TRACE}-00f067aa0ba902b7-01".encode()) == TRACE
    for bad in (None, b"", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", b"garbage",
                f"00-{TRACE.upper()}-00f067aa0ba902b7-01".encode()):
        assert trace_id(bad) is None


def _rest_kinds(url: str):
    """(expected status, client, request) of each kind of REST request the load sends."""
    infer = url + "/v2/models/test-mlp/infer"
    alice = {"Authorization": f"Bearer {TOKENS['alice'][1]}", "Content-Type": "application/json"}
    bob = {"Authorization": f"Bearer {TOKENS['bob'][0]}", "Content-Type": "application/json"}
    return [
        (200, "alice", lambda c: c.post(infer, content=BODY, headers={
            **alice, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})),
        (200, "bob", lambda c: c.post(infer, content=BODY, headers=bob)),
        (401, None, lambda c: c.post(infer, content=BODY)),
        (401, None, lambda c: c.post(infer, content=BODY, headers={"Authorization": "Bearer nope"})),
        (400, "bob", lambda c: c.post(infer, content=b'{"inputs": [}', headers=bob)),
        (404, "alice", lambda c: c.get(url + "/v2/models/other", headers=alice)),
        (413, "alice", lambda c: c.post(infer, content=b"x" * 70_000, headers=alice)),
        (200, "alice", lambda c: c.get(url + "/v2/models/test-mlp", headers=alice)),
    ]


def test_one_record_per_request_under_load(contexts, tmp_path):
    path = clients_file(tmp_path / "clients.json", TOKENS)
    audit = tmp_path / "audit.jsonl"
    server = ServerProcess(contexts["mlp"], {"SERVEDMODEL_CLIENTS_FILE": str(path),
                                             "SERVEDMODEL_AUDIT_LOG": str(audit),
                                             "SERVEDMODEL_MAX_BODY_BYTES": "65536"},
                           grpc=True).wait_ready()
    kinds = _rest_kinds(server.url)
    rng = random.Random(21)
    plan = [rng.randrange(len(kinds)) for _ in range(600)]
    got: Counter = Counter()
    lock = threading.Lock()

    def worker(chunk):
        with httpx.Client(timeout=30) as c:
            for i in chunk:
                status, client, send = kinds[i]
                r = send(c)
                assert r.status_code == status, (i, r.status_code, r.text)
                with lock:
                    got[(status, client, "rest")] += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, [plan[k::8] for k in range(8)]))
    # gRPC: answered, unauthenticated and refused-by-validation calls
    grpc = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 784), np.float32))
    bad = tg.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    for n in range(60):
        kind = n % 3
        headers = None if kind == 1 else {"authorization": f"Bearer {TOKENS['bob'][0]}",
                                          "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        if kind == 0:
            grpc.infer("test-mlp", [inp], headers=headers)
            got[(200, "bob", "grpc")] += 1
        else:
            with pytest.raises(InferenceServerException):
                grpc.infer("test-mlp", [bad if kind == 2 else inp], headers=headers)
            got[(401 if kind == 1 else 400, None if kind == 1 else "bob", "grpc")] += 1
    # probes and scrapes are not audited
    for _ in range(20):
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
        assert httpx.get(server.url + "/metrics").status_code == 200
        assert grpc.is_server_live()
    assert server.stop() == 0                # SIGTERM: the drain path writes what is left
    lines = audit.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    seen = Counter((r["status"], r["client"], r["protocol"]) for r in records)
    assert seen == got, f"records {dict(seen)} != requests {dict(got)}"
    assert len(records) == sum(got.values()) == 660
    assert len({r["request_id"] for r in records}) == len(records)
    traced = [r for r in records if r["trace_id"] == TRACE]
    assert traced and all(r["client"] in ("alice", "bob") for r in traced)
    infer_ok = [r for r in records if r["status"] == 200 and r["path"].endswith("infer")]
    assert all(r["rows"] == 2 and r["bytes_in"] > 0 and r["bytes_out"] > 0 for r in infer_ok)
    assert {r["model"] for r in records} == {"test-mlp"} and all(r["model_version"] for r in records)
    assert all(r["log"] == "audit" and r["time"].endswith("Z") and r["ms"] >= 0 for r in records)
    grpc_refused = [r for r in records if r["protocol"] == "grpc" and r["status"] != 200]
    assert {r["grpc_code"] for r in grpc_refused} == {"UNAUTHENTICATED", "INVALID_ARGUMENT"}
    text = audit.read_text()
    for tokens in TOKENS.values():
        for token in tokens:
            assert token not in text and sha256_hex(token) not in text
    assert "Bearer" not in text and "7.0625" not in text     # no header value, no tensor data


def test_audit_to_stdout_is_a_distinct_stream(contexts, tmp_path):
    path = clients_file(tmp_path / "clients.json", TOKENS)
    server = ServerProcess(contexts["mlp"], {"SERVEDMODEL_CLIENTS_FILE": str(path),
                                             "SERVEDMODEL_AUDIT_LOG": "-",
                                             "SERVEDMODEL_LOG_LEVEL": "info"}).wait_ready()
    for _ in range(5):
        httpx.get(server.url + "/v2/models/test-mlp",
                  headers={"Authorization": f"Bearer {TOKENS['bob'][0]}"})
    httpx.get(server.url + "/v2/models/test-mlp")
    assert server.stop() == 0
    lines = [json.loads(x) for x in server.log_path.read_text().splitlines() if x.startswith("{")]
    audit = [x for x in lines if x.get("log") == "audit"]
    access = [x for x in lines if x.get("path") == "/v2/models/test-mlp" and x.get("log") != "audit"]
    assert [(r["status"], r["client"]) for r in audit] == [(200, "bob")] * 5 + [(401, None)]
    assert len(access) == 6                     # the access log is still its own lines


def test_an_audit_log_that_cannot_be_opened_stops_the_server(contexts, tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    proc = subprocess.run([sys.executable, "-m", "serving", "--context", str(contexts["mlp"])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin",
                               "SERVEDMODEL_AUDIT_LOG": str(tmp_path / "missing" / "a.jsonl")})
    assert proc.returncode == 2 and "SERVEDMODEL_AUDIT_LOG" in proc.stderr


def test_connection_layer_refusals_are_audited(contexts, tmp_path):
    """A request head over the limit never reaches the app: the connection layer audits it."""
    import socket

    audit = tmp_path / "audit.jsonl"
    server = ServerProcess(contexts["mlp"], {"SERVEDMODEL_AUDIT_LOG": str(audit),
                                             "SERVEDMODEL_MAX_HEADER_BYTES": "1024"}).wait_ready()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/models/test-mlp?secret=1 HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)                 # the limit counts from the head's second read
        s.sendall(b"X-Big: " + b"a" * 4000 + b"\r\n\r\n")
        assert b" 431 " in s.recv(4096)
    assert server.stop() == 0
    [record] = [json.loads(x) for x in audit.read_text().splitlines()]
    assert (record["status"], record["reason"], record["path"]) == (
        431, "header_too_large", "/v2/models/test-mlp")
