"""Conformance over loopback: the V2 routes, JSON and binary tensors, with raw HTTP and with the
real `tritonclient.http` client, unchanged."""
from __future__ import annotations

import json
import math
import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from contexts import mlp_weights


def expected_logits(x: np.ndarray) -> np.ndarray:
    w, b = mlp_weights()
    return x @ w + b


def client_for(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=4)


def test_health_and_metadata(mlp_server):
    base = mlp_server.url
    assert httpx.get(base + "/v2/health/live").json() == {"live": True}
    assert httpx.get(base + "/v2/health/ready").status_code == 200
    meta = httpx.get(base + "/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    model = httpx.get(base + "/v2/models/test-mlp").json()
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    version = model["versions"][0]
    assert httpx.get(f"{base}/v2/models/test-mlp/versions/{version}").json() == model
    assert httpx.get(f"{base}/v2/models/test-mlp/versions/{version}/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/test-mlp/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/test-mlp/versions/0/ready").status_code == 404


def test_json_infer_with_id_parameters_and_versions(mlp_server):
    x = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    version = httpx.get(mlp_server.url + "/v2/models/test-mlp").json()["versions"][0]
    for path in ("/v2/models/test-mlp/infer", f"/v2/models/test-mlp/versions/{version}/infer"):
        body = {"id": "req-7", "parameters": {"custom": "x", "priority": 0},
                "inputs": [{"name": "input", "shape": [3, 784], "datatype": "FP32",
                            "data": x.tolist(), "parameters": {"anything": 1}}],
                "outputs": [{"name": "logits"}]}
        r = httpx.post(mlp_server.url + path, json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == "req-7" and doc["model_name"] == "test-mlp"
        assert doc["model_version"] == version
        out = doc["outputs"][0]
        assert out["shape"] == [3, 10] and out["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(out["data"]).reshape(3, 10), expected_logits(x),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_mlp(mlp_server, binary):
    client = client_for(mlp_server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("test-mlp")
    assert client.get_model_metadata("test-mlp")["name"] == "test-mlp"
    x = np.random.default_rng(2).random((4, 784), dtype=np.float32)
    inp = triton.InferInput("input", [4, 784], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer("test-mlp", [inp], outputs=outputs, request_id="abc")
    np.testing.assert_allclose(np.asarray(result.as_numpy("logits")), expected_logits(x), rtol=1e-4,
                               atol=1e-4)
    assert result.get_response()["id"] == "abc"
    # Default: no requested outputs -> the client asks for binary outputs of everything.
    result = client.infer("test-mlp", [inp])
    np.testing.assert_allclose(np.asarray(result.as_numpy("logits")), expected_logits(x), rtol=1e-4,
                               atol=1e-4)
    client.close()


def test_tritonclient_multi_inputs_outputs_and_subset(multi_server):
    client = client_for(multi_server)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.arange(8, dtype=np.int64).reshape(2, 4) * 10
    ia, ib = triton.InferInput("a", [2, 4], "FP32"), triton.InferInput("b", [2, 4], "INT64")
    ia.set_data_from_numpy(a, binary_data=True)
    ib.set_data_from_numpy(b, binary_data=False)      # mixed JSON and binary in one request
    result = client.infer("test-multi", [ia, ib], outputs=[
        triton.InferRequestedOutput("sum", binary_data=False),
        triton.InferRequestedOutput("a_copy", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("a_copy"), a)
    only = client.infer("test-multi", [ia, ib], outputs=[triton.InferRequestedOutput("a_copy")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["a_copy"]
    with pytest.raises(InferenceServerException) as e:
        client.infer("test-multi", [ia])
    assert "missing input" in str(e.value) and e.value.status() == "400"
    client.close()


def test_fp16_binary(half_server):
    client = client_for(half_server)
    h = np.array([[1.5, -2.0]], dtype=np.float16)
    inp = triton.InferInput("h", [1, 2], "FP16")
    inp.set_data_from_numpy(h, binary_data=True)
    result = client.infer("test-half", [inp])
    np.testing.assert_array_equal(result.as_numpy("y"), np.array([[3.0, -4.0]], np.float32))
    client.close()


def test_nan_and_inf_outputs_are_valid_json(log_server):
    x = [[0.0, -1.0, math.e], [1.0, float("inf"), 2.0]]
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                   "data": [[0.0, -1.0, math.e], [1.0, 1e39, 2.0]]}]})
    # 1e39 overflows float32 to +inf on the way in.
    r = httpx.post(log_server.url + "/v2/models/test-log/infer", content=body)
    assert r.status_code == 200, r.text
    json.loads(r.text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    data = r.json()["outputs"][0]["data"]
    assert data[0] == "-Infinity" and data[1] == "NaN" and data[4] == "Infinity"
    # tritonclient, JSON outputs: as_numpy gives real floats back.
    client = client_for(log_server)
    inp = triton.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(np.array(x, dtype=np.float32), binary_data=False)
    out = client.infer("test-log", [inp], outputs=[
        triton.InferRequestedOutput("y", binary_data=False)]).as_numpy("y")
    assert out[0, 0] == -np.inf and np.isnan(out[0, 1]) and out[1, 1] == np.inf
    assert out[0, 2] == pytest.approx(1.0)
    client.close()


def test_concurrent_requests_are_batched_and_split_correctly(mlp_server):
    """Many threads at once, each with its own rows and batch size: every answer is its own."""
    rng = np.random.default_rng(3)
    errors = []

    def worker(seed):
        client = triton.InferenceServerClient(f"127.0.0.1:{mlp_server.port}")
        local = np.random.default_rng(seed)
        for _ in range(20):
            n = int(local.integers(1, 5))
            x = local.random((n, 784), dtype=np.float32)
            inp = triton.InferInput("input", [n, 784], "FP32")
            inp.set_data_from_numpy(x, binary_data=bool(local.integers(0, 2)))
            got = client.infer("test-mlp", [inp]).as_numpy("logits")
            if not np.allclose(np.asarray(got), expected_logits(x), rtol=1e-4, atol=1e-4):
                errors.append(seed)
        client.close()

    threads = [threading.Thread(target=worker, args=(int(s),))
               for s in rng.integers(0, 1 << 30, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    metrics = httpx.get(mlp_server.url + "/metrics").text
    count = float(_metric(metrics, "servedmodel_batch_size_count"))
    total = float(_metric(metrics, "servedmodel_batch_size_sum"))
    assert total / count > 1.0, "no request was ever batched with another"


def _metric(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return line.rsplit(" ", 1)[1]
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_names_and_types(mlp_server):
    httpx.post(mlp_server.url + "/v2/models/test-mlp/infer", content=b"{")
    text = httpx.get(mlp_server.url + "/metrics").text
    for name, kind in [("servedmodel_requests_total", "counter"),
                       ("servedmodel_request_failures_total", "counter"),
                       ("servedmodel_request_duration_seconds", "histogram"),
                       ("servedmodel_queue_duration_seconds", "histogram"),
                       ("servedmodel_compute_duration_seconds", "histogram"),
                       ("servedmodel_batch_size", "histogram"),
                       ("servedmodel_inflight_requests", "gauge"),
                       ("servedmodel_queue_depth", "gauge")]:
        assert f"# TYPE {name} {kind}" in text
    assert 'servedmodel_requests_total{model="test-mlp",protocol="rest",outcome="client_error"}' in text
    # the canary reads which version each pod serves
    version = httpx.get(mlp_server.url + "/v2/models/test-mlp").json()["versions"][0]
    assert "# TYPE servedmodel_model_info gauge" in text
    assert f'servedmodel_model_info{{model="test-mlp",version="{version}"}} 1' in text
    assert "# TYPE servedmodel_request_duration_seconds histogram" in text
    assert 'servedmodel_request_failures_total{model="test-mlp",protocol="rest",reason="bad_request"}' in text


def test_openapi_served_and_matches_generator(mlp_server, contexts):
    import subprocess
    import sys

    served = httpx.get(mlp_server.url + "/openapi.json").json()
    assert served == httpx.get(mlp_server.url + "/v2/models/test-mlp/openapi.json").json()
    out = subprocess.run([sys.executable, "-m", "serving", "openapi", "--context",
                          str(contexts["mlp"])], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == served
    assert "/v2/models/{model_name}/infer" in served["paths"]


def test_bearer_auth(contexts, start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = start_server(contexts["mlp"], {"SERVEDMODEL_AUTH_TOKEN_FILE": str(token_file),
                                            "SERVEDMODEL_LOG_LEVEL": "info"})
    url = server.url + "/v2/models/test-mlp"
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    r = httpx.get(url)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.get(url, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    assert httpx.get(url, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert httpx.get(server.url + "/v2/models/other").status_code == 401   # no name probing
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = triton.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 784), np.float32))
    res = client.infer("test-mlp", [inp], headers={"Authorization": "Bearer s3cret-token"})
    assert res.as_numpy("logits").shape == (1, 10)
    import time
    time.sleep(0.5)                                # access logs are flushed every 0.25 s
    logged = server.output()
    assert '"status":401' in logged and '"status":200' in logged
    assert "s3cret" not in logged and "Bearer" not in logged
