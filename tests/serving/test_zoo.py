"""Conformance on real zoo contexts built by `models.build` (the server started from the
context's own copy of serving/, as the image runs it): tritonclient JSON and binary against
onnxruntime on the same file, and a SIGTERM drain."""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from conftest import ServerProcess

models = pytest.importorskip("models", reason="the models pipeline (issue 2) is not there")
if not hasattr(models, "build"):
    pytest.skip("models.build is not there yet", allow_module_level=True)


@pytest.fixture(scope="session")
def mnist_context(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    result = models.build(model="mnist-mlp", compression="none", out_dir=base / "mnist-mlp",
                          cache_dir=base / "cache")
    return result.context_dir


class ContextServer(ServerProcess):
    """Run `python -m serving` from inside the context, like the image's CMD."""

    def __init__(self, context, env=None):
        import os
        import subprocess
        import sys

        from conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = context.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "SERVEDMODEL_CONTEXT": str(context),
                    "SERVEDMODEL_PORT": str(self.port), "SERVEDMODEL_HOST": "127.0.0.1",
                    "SERVEDMODEL_LOG_LEVEL": "info", "PYTHONPATH": str(context), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=context,
                                     env=full_env, stdout=self._log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def mnist_server(mnist_context):
    server = ContextServer(mnist_context).wait_ready()
    yield server
    assert server.stop() == 0


def reference(context, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(context / "model" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


@pytest.mark.slow
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_against_real_mnist(mnist_context, mnist_server, binary):
    manifest = json.loads((mnist_context / "model" / "manifest.json").read_text())
    client = triton.InferenceServerClient(f"127.0.0.1:{mnist_server.port}")
    meta = client.get_model_metadata("mnist-mlp")
    assert meta["versions"] == [manifest["version"]]
    assert meta["inputs"] == manifest["inputs"] and meta["outputs"] == manifest["outputs"]
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    inp = triton.InferInput("input", [5, 784], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("mnist-mlp", [inp], model_version=manifest["version"],
                          outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
    np.testing.assert_allclose(np.asarray(result.as_numpy("logits")), reference(mnist_context, x),
                               rtol=1e-5, atol=1e-5)
    client.close()


@pytest.mark.slow
def test_access_log_is_json_without_tensor_data(mnist_server):
    body = {"id": "trace-1", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                         "data": [0.123456] * 784}]}
    assert httpx.post(mnist_server.url + "/v2/models/mnist-mlp/infer", json=body).status_code == 200
    time.sleep(0.5)                    # the access log is flushed every 0.25 s
    lines = [json.loads(line) for line in mnist_server.output().splitlines()
             if line.startswith("{") and '"path"' in line]
    infer = [r for r in lines if r["path"].endswith("/infer")]
    assert infer and {"method", "path", "status", "ms"} <= set(infer[-1])
    assert "0.123456" not in mnist_server.output()


@pytest.mark.slow
def test_sigterm_real_context_under_load(mnist_context):
    server = ContextServer(mnist_context, {"SERVEDMODEL_DRAIN_SECONDS": "5"}).wait_ready()
    x = np.random.default_rng(1).random((2, 784), dtype=np.float32)
    expected = reference(mnist_context, x)
    stop, results, lock = threading.Event(), [], threading.Lock()

    def load():
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        inp = triton.InferInput("input", [2, 784], "FP32")
        inp.set_data_from_numpy(x)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                out = client.infer("mnist-mlp", [inp]).as_numpy("logits")
                ok = np.allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
                item = (t0, "ok" if ok else "wrong")
            except Exception as e:            # 503 while draining, or refused after exit
                item = (t0, f"{type(e).__name__}: {e}")
            with lock:
                results.append(item)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 0, server.output()
    assert time.monotonic() - t_term < 5
    before = [r for t0, r in results if t0 < t_term - 0.05]
    assert len(before) > 20 and set(before) == {"ok"}, set(before)
    assert "wrong" not in {r for _, r in results}


def _without_version(doc: dict, version: str) -> str:
    return json.dumps(doc, sort_keys=True).replace(version, "<version>")


@pytest.mark.slow
def test_docs_openapi_is_generated_from_the_mnist_manifest(mnist_context):
    """docs/openapi.json is `python -m serving openapi` for mnist-mlp; only the content-hash
    version (which changes with every serving/ edit) may differ."""
    from pathlib import Path

    from servedmodel.serving.manifest import load_manifest
    from servedmodel.serving.openapi import build_openapi
    from servedmodel.serving.settings import load_settings

    kept = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
    manifest = load_manifest(mnist_context)
    assert _without_version(kept, kept["info"]["version"]) == _without_version(
        build_openapi(manifest, load_settings(manifest, {}, {}).batching, manifest.name),
        manifest.version), \
        "regenerate: python -m serving openapi --context <mnist-mlp context> --out docs/openapi.json"
