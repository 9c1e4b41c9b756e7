"""The regression suite of bad requests: each gets the right 4xx and an error naming what was
wrong; the server stays live; thousands of them do not grow memory."""
from __future__ import annotations

import json

import httpx
import pytest

from conftest import raw_http

MLP = "/v2/models/test-mlp/infer"
MULTI = "/v2/models/test-multi/infer"
LOG = "/v2/models/test-log/infer"
HALF = "/v2/models/test-half/infer"
GOOD = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}


def req(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def nested(depth: int, leaf=0.5):
    value = [leaf]
    for _ in range(depth - 1):
        value = [value]
    return value


def binary(header: dict, blob: bytes) -> tuple[bytes, dict]:
    h = json.dumps(header).encode()
    return h + blob, {"Inference-Header-Content-Length": str(len(h))}


_bin_mismatch = binary({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 100}}]}, b"\0" * 100)
_bin_huge = binary({"inputs": [{"name": "x", "shape": [1, 2 ** 38], "datatype": "FP32",
                                "parameters": {"binary_data_size": 2 ** 40}}]}, b"\0" * 16)
_bin_leftover = binary({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 3136}}]}, b"\0" * 3200)
_fp16_ok_header = {"inputs": [{"name": "h", "shape": [1, 2], "datatype": "FP16",
                               "parameters": {"binary_data_size": 4}}]}

# (id, server, method, path, body, headers, status, words the error must contain)
CASES = [
    ("malformed-json", "mlp", "POST", MLP, b'{"inputs": [', {}, 400, "not valid JSON"),
    # A binary request whose client forgot the header: the error names the header, not a
    # UTF-8 decoding detail of the raw tensor bytes.
    ("binary-without-header-length", "mlp", "POST", MLP, _bin_leftover[0][:-3200] + b"\xff\xfe" * 1568, {}, 400,
     "needs the Inference-Header-Content-Length header"),
    ("binary-without-header-length-utf8", "mlp", "POST", MLP, _bin_leftover[0][:-3200] + b"\0" * 3136, {}, 400,
     "needs the Inference-Header-Content-Length header"),
    ("json-deeper-than-1024", "mlp", "POST", MLP, b"[" * 5000 + b"]" * 5000, {}, 400,
     "deeper than 100"),
    ("parameters-nested-101", "mlp", "POST", MLP,
     req(GOOD, parameters={"p": nested(150)}), {}, 400, "deeper than 100"),
    ("data-nested-101", "mlp", "POST", MLP,
     req({**GOOD, "data": nested(150)}), {}, 400, "deeper than 100"),
    ("unknown-model", "mlp", "POST", "/v2/models/nope/infer", req(GOOD), {}, 404,
     "unknown model 'nope'"),
    ("unknown-version", "mlp", "POST", "/v2/models/test-mlp/versions/999/infer", req(GOOD), {},
     404, "unknown version '999'"),
    ("missing-input", "multi", "POST", MULTI,
     req({"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}), {}, 400,
     "missing input(s) b"),
    ("extra-input", "mlp", "POST", MLP, req(GOOD, {**GOOD, "name": "extra"}), {}, 400,
     "unknown input 'extra'"),
    ("duplicate-input", "mlp", "POST", MLP, req(GOOD, GOOD), {}, 400, "given twice"),
    ("duplicate-outputs", "mlp", "POST", MLP,
     req(GOOD, outputs=[{"name": "logits"}, {"name": "logits"}]), {}, 400, "requested twice"),
    ("unknown-output", "mlp", "POST", MLP, req(GOOD, outputs=[{"name": "probs"}]), {}, 400,
     "unknown output 'probs'"),
    ("wrong-datatype", "mlp", "POST", MLP, req({**GOOD, "datatype": "INT64"}), {}, 400,
     "the model takes FP32"),
    ("unknown-datatype", "mlp", "POST", MLP, req({**GOOD, "datatype": "FLOAT"}), {}, 400,
     "not a V2 datatype"),
    ("fp16-as-json", "half", "POST", HALF,
     req({"name": "h", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}), {}, 400,
     "FP16 cannot be sent as JSON"),
    ("bf16-as-json", "mlp", "POST", MLP, req({**GOOD, "datatype": "BF16"}), {}, 400,
     "BF16 cannot be sent as JSON"),
    ("count-mismatch", "mlp", "POST", MLP, req({**GOOD, "data": [0.5] * 783}), {}, 400,
     "needs 784 elements, data has 783"),
    ("binary-size-mismatch", "mlp", "POST", MLP, *_bin_mismatch, 400,
     "binary_data_size is 100 bytes"),
    ("binary-leftover", "mlp", "POST", MLP, *_bin_leftover, 400, "binary section has 3200 bytes"),
    ("bad-header-length-text", "mlp", "POST", MLP, req(GOOD),
     {"Inference-Header-Content-Length": "abc"}, 400, "Inference-Header-Content-Length"),
    ("bad-header-length-too-big", "mlp", "POST", MLP, req(GOOD),
     {"Inference-Header-Content-Length": "99999999"}, 400, "Inference-Header-Content-Length"),
    ("bad-header-length-zero", "half", "POST", HALF, json.dumps(_fp16_ok_header).encode(),
     {"Inference-Header-Content-Length": "0"}, 400, "Inference-Header-Content-Length"),
    ("negative-dimension", "log", "POST", LOG,
     req({"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1, 2, 3]}), {}, 400,
     "negative dimension"),
    ("element-count-overflow", "log", "POST", LOG,
     req({"name": "x", "shape": [1, 2 ** 63 - 1], "datatype": "FP32", "data": [1]}), {}, 400,
     "over the body limit"),
    ("small-body-huge-tensor", "log", "POST", LOG, *_bin_huge, 400, "over the body limit"),
    ("non-numeric-data", "mlp", "POST", MLP, req({**GOOD, "data": ["x"] * 784}), {}, 400,
     "must be numbers"),
    ("null-in-data", "mlp", "POST", MLP, req({**GOOD, "data": [None] * 784}), {}, 400,
     "must be numbers"),
    ("float-for-int64", "multi", "POST", MULTI,
     req({"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
         {"name": "b", "shape": [1, 4], "datatype": "INT64", "data": [1.5, 2, 3, 4]}), {}, 400,
     "must be integers"),
    ("ragged-data", "mlp", "POST", MLP,
     req({**GOOD, "shape": [2, 784], "data": [[0.5] * 784, [0.5] * 3]}), {}, 400,
     "rectangular"),
    ("empty-batch", "mlp", "POST", MLP, req({**GOOD, "shape": [0, 784], "data": []}), {}, 400,
     "empty batch"),
    ("batch-over-max", "mlp", "POST", MLP,
     req({**GOOD, "shape": [33, 784], "data": [0.5] * 784 * 33}), {}, 400,
     "over max_batch_size 32"),
    ("batch-dims-differ", "multi", "POST", MULTI,
     req({"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
         {"name": "b", "shape": [2, 4], "datatype": "INT64", "data": [1] * 8}), {}, 400,
     "differs from the other inputs"),
    ("wrong-fixed-dim", "mlp", "POST", MLP, req({**GOOD, "shape": [1, 785]}), {}, 400,
     "does not match the model's [-1, 784]"),
    ("wrong-rank", "mlp", "POST", MLP, req({**GOOD, "shape": [784]}), {}, 400, "has rank 1"),
    ("no-inputs", "mlp", "POST", MLP, b'{"inputs": []}', {}, 400, "non-empty list"),
    ("not-an-object", "mlp", "POST", MLP, b"[1, 2]", {}, 400, "JSON object"),
    ("empty-body", "mlp", "POST", MLP, b"", {}, 400, "body is empty"),
    ("id-not-string", "mlp", "POST", MLP, req(GOOD, id=5), {}, 400, "'id' must be a string"),
    ("binary-size-without-header", "mlp", "POST", MLP,
     req({"name": "input", "shape": [1, 784], "datatype": "FP32",
          "parameters": {"binary_data_size": 3136}}), {}, 400, "no Inference-Header"),
    ("no-data", "mlp", "POST", MLP, req({k: v for k, v in GOOD.items() if k != "data"}), {}, 400,
     "neither 'data'"),
    ("gzip-body", "mlp", "POST", MLP, req(GOOD), {"Content-Encoding": "gzip"}, 415,
     "Content-Encoding"),
    ("get-on-infer", "mlp", "GET", MLP, b"", {}, 405, "use POST"),
    ("repository-load", "mlp", "POST", "/v2/repository/models/test-mlp/load", b"{}", {}, 404,
     "no route"),
    ("repository-index", "mlp", "POST", "/v2/repository/index", b"{}", {}, 404, "no route"),
    ("traversal-encoded", "mlp", "POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", req(GOOD),
     {}, 400, "invalid model name"),
    ("name-with-bad-chars", "mlp", "GET", "/v2/models/a%20b%3Bc", b"", {}, 400,
     "invalid model name"),
    ("classification", "mlp", "POST", MLP,
     req(GOOD, outputs=[{"name": "logits", "parameters": {"classification": 3}}]), {}, 400,
     "classification"),
]


@pytest.fixture(scope="module")
def servers(mlp_server, multi_server, log_server, half_server):
    return {"mlp": mlp_server, "multi": multi_server, "log": log_server, "half": half_server}


def test_at_least_20_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(servers, case):
    _, which, method, path, body, headers, status, words = case
    server = servers[which]
    r = httpx.request(method, server.url + path, content=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error, error
    assert httpx.get(server.url + "/v2/health/live", timeout=5).status_code == 200


@pytest.mark.parametrize("path", [
    b"/v2/models/../../etc/passwd", b"/v2/models/..", b"/v2/models/../infer",
    b"/v2/models/test-mlp/../../../etc/passwd", b"/v2/models/%2e%2e/infer",
    b"/v2/models/a%00b/infer", b"/v2/models/~root/ready",
])
def test_path_traversal_names(mlp_server, path):
    status, body = raw_http(mlp_server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                                             b"Connection: close\r\n\r\n")
    assert status in (400, 404), body
    assert "error" in json.loads(body)


def test_body_over_limit_is_413_without_reading_it(mlp_server):
    """A declared 100 MB body is refused from the headers alone: we send none of it."""
    head = (f"POST {MLP} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
    status, body = raw_http(mlp_server.port, head + b'{"inputs": [', timeout=5)
    assert status == 413
    assert "over the limit of 67108864 bytes" in json.loads(body)["error"]


def test_streamed_body_over_limit_is_413(contexts, start_server):
    server = start_server(contexts["mlp"], {"SERVEDMODEL_MAX_BODY_BYTES": "4096"})

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    r = httpx.post(server.url + MLP, content=chunks(), timeout=10)   # chunked: no Content-Length
    assert r.status_code == 413
    assert "over the limit of 4096 bytes" in r.json()["error"]
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_thousands_of_bad_requests_keep_memory_bounded(servers):
    server = servers["log"]
    bodies = [(c[4], c[5]) for c in CASES if c[1] == "log"] + [
        (b'{"inputs": [', {}), (b"[" * 2000 + b"]" * 2000, {}),
        (req({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": ["a", "b", "c"]}), {}),
        (req({"name": "x", "shape": [1, 2 ** 40], "datatype": "FP32", "data": [1.0] * 1000}), {}),
    ]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        def burst(n):
            for i in range(n):
                body, headers = bodies[i % len(bodies)]
                r = client.post(LOG, content=body, headers=headers)
                assert 400 <= r.status_code < 500, r.text
        burst(300)
        before = server.rss_bytes()
        burst(3000)
        after = server.rss_bytes()
        assert client.get("/v2/health/live").status_code == 200
    assert after - before < 32 * 1024 * 1024, (before, after)
