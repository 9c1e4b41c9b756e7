"""One source of truth for batching and the served name: `resolve_batching` (manifest +
environment) is read by the request validator, the batcher, the warm-up and the OpenAPI
document alike; SERVEDMODEL_MAX_BATCH_SIZE=0 is refused at start naming the setting;
SERVEDMODEL_MODEL_NAME renames the model on every route (tritonclient.http included)."""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from contexts import write_context
from servedmodel.serving.errors import StartupError
from servedmodel.serving.manifest import load_manifest
from servedmodel.serving.settings import Batching, load_settings
from test_startup import _refuses, run_server


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    return load_manifest(write_context(tmp_path_factory.mktemp("b") / "ctx", "mlp",
                                       max_batch_size=16, warmup=(1, 4, 8, 16)))


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory):
    return load_manifest(write_context(tmp_path_factory.mktemp("u") / "ctx", "mlp",
                                       max_batch_size=0, warmup=(1,)))


def test_batching_resolves_manifest_then_environment(batched, unbatched):
    b = load_settings(batched, {}, {}).batching
    assert b == Batching(max_batch_size=16, max_queue_delay_ms=2.0,
                         warmup_batch_sizes=(1, 4, 8, 16), max_queue_size=b.max_queue_size,
                         queue_timeout_ms=b.queue_timeout_ms)
    b = load_settings(batched, {}, {"SERVEDMODEL_MAX_BATCH_SIZE": "6",
                                    "SERVEDMODEL_MAX_QUEUE_DELAY_MS": "0"}).batching
    # The warm-up sizes follow the resolved maximum: nothing above it, the maximum itself too.
    assert (b.max_batch_size, b.max_queue_delay_ms, b.warmup_batch_sizes) == (6, 0.0, (1, 4, 6))
    assert b.enabled
    u = load_settings(unbatched, {}, {}).batching
    assert (u.max_batch_size, u.enabled, u.warmup_batch_sizes) == (0, False, (1,))


@pytest.mark.parametrize("which,value,words", [
    ("batched", "0", ["SERVEDMODEL_MAX_BATCH_SIZE='0'", "integer >= 1", "batch dimension"]),
    ("batched", "-2", ["SERVEDMODEL_MAX_BATCH_SIZE='-2'"]),
    ("unbatched", "8", ["SERVEDMODEL_MAX_BATCH_SIZE='8'", "no batch dimension"]),
])
def test_max_batch_size_refusals_name_the_setting(batched, unbatched, which, value, words):
    manifest = {"batched": batched, "unbatched": unbatched}[which]
    with pytest.raises(StartupError) as e:
        load_settings(manifest, {}, {"SERVEDMODEL_MAX_BATCH_SIZE": value})
    for word in words:
        assert word in str(e.value)


def test_max_batch_size_zero_refused_at_start(tmp_path):
    ctx = write_context(tmp_path / "ctx", "mlp")
    result = run_server(ctx, {"SERVEDMODEL_MAX_BATCH_SIZE": "0"})
    assert result.returncode == 2
    _refuses(result, "SERVEDMODEL_MAX_BATCH_SIZE='0'", "1 runs every request alone")


@pytest.mark.parametrize("name", ["", "a/b", "..", "x y"])
def test_bad_served_name_refused(batched, name):
    env = {"SERVEDMODEL_MODEL_NAME": name}
    if name == "":
        assert load_settings(batched, {}, env).model_name == batched.name   # unset = manifest
        return
    with pytest.raises(StartupError) as e:
        load_settings(batched, {}, env)
    assert "SERVEDMODEL_MODEL_NAME" in str(e.value)


@pytest.fixture(scope="module")
def renamed_server(contexts, start_server):
    return start_server(contexts["mlp"], {"SERVEDMODEL_MAX_BATCH_SIZE": "8",
                                          "SERVEDMODEL_MODEL_NAME": "digits",
                                          "SERVEDMODEL_LOG_LEVEL": "info"})


def _rows(n: int) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [n, 784], "datatype": "FP32",
                                   "data": [0.5] * (784 * n)}]}).encode()


def test_every_reader_sees_the_resolved_max_batch_size(renamed_server):
    url = renamed_server.url
    # the request validator
    r = httpx.post(url + "/v2/models/digits/infer", content=_rows(9))
    assert r.status_code == 400 and "over max_batch_size 8" in r.json()["error"]
    assert httpx.post(url + "/v2/models/digits/infer", content=_rows(8)).status_code == 200
    # the OpenAPI document
    doc = httpx.get(url + "/openapi.json").json()
    schema = doc["components"]["schemas"]["InferenceRequest"]["properties"]["inputs"]["items"]
    assert schema["properties"]["shape"]["prefixItems"][0]["maximum"] == 8
    assert doc["paths"]["/v2/models/{model_name}/infer"]["parameters"][0]["schema"][
        "enum"] == ["digits"]
    # the warm-up and the batcher (the ready line: what was timed and what is packed)
    deadline = time.monotonic() + 5
    while '"event":"ready"' not in renamed_server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    ready = next(json.loads(line) for line in renamed_server.output().splitlines()
                 if '"event":"ready"' in line)
    assert {int(b) for b in ready["warmup_items_per_second"]} == {1, 8}
    assert 1 <= ready["preferred_batch_size"] <= 8


def test_served_name_on_every_route_and_tritonclient(renamed_server, contexts):
    url = renamed_server.url
    meta = httpx.get(url + "/v2/models/digits").json()
    assert meta["name"] == "digits"
    assert httpx.get(url + "/v2/models/digits/ready").status_code == 200
    r = httpx.get(url + "/v2/models/test-mlp")
    assert r.status_code == 404 and "this server serves 'digits'" in r.json()["error"]
    assert 'model="digits"' in httpx.get(url + "/metrics").text

    client = triton.InferenceServerClient(f"127.0.0.1:{renamed_server.port}")
    assert client.is_model_ready("digits")
    assert client.get_model_metadata("digits")["name"] == "digits"
    x = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    inp = triton.InferInput("input", [3, 784], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    res = client.infer("digits", [inp])
    assert res.get_response()["model_name"] == "digits"
    from contexts import mlp_weights
    w, b = mlp_weights()
    np.testing.assert_allclose(np.asarray(res.as_numpy("logits")), x @ w + b, rtol=1e-4, atol=1e-5)
    with pytest.raises(InferenceServerException) as e:
        client.infer("test-mlp", [inp])
    assert "unknown model" in str(e.value)
