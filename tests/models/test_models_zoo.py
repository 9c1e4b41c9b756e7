"""Every zoo model through every compression: real export, real onnxruntime, real quantization.
The manifest must describe the ONNX graph as it really is."""
from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from servedmodel.models.zoo import ZOO

ORT_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(int32)": "INT32"}
EVALUATED = {"digits-cnn": "accuracy", "minilm": "spearman"}
CASES = [pytest.param(m, c, marks=[pytest.mark.slow] if m == "minilm" else [], id=f"{m}-{c}")
         for m in ZOO for c in ("none", "fp16", "int8")]


def graph_signature(path):
    """(name, V2 datatype, shape) of the graph's inputs and outputs, read from the onnx file."""
    g = onnx.load(str(path)).graph
    conv = {1: "FP32", 7: "INT64", 10: "FP16", 6: "INT32"}
    def sig(vs):
        return [{"name": v.name, "datatype": conv[v.type.tensor_type.elem_type],
                 "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
                for v in vs]
    return sig(g.input), sig(g.output)


@pytest.mark.parametrize("model, compression", CASES)
def test_zoo_model_builds(build_once, model, compression):
    r = build_once(model, compression)
    ctx, m = r.context_dir, r.manifest
    # the context layout of docs/architecture.md
    for f in ("Dockerfile", ".dockerignore", "requirements.txt", "model/model.onnx", "model/manifest.json",
              "serving/__init__.py"):
        assert (ctx / f).is_file(), f
    assert not list(ctx.rglob("__pycache__"))
    reqs = [ln.split("==")[0].strip().lower() for ln in (ctx / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert "onnxruntime" in reqs and "torch" not in reqs
    assert re.fullmatch(r"[0-9a-f]{16}", r.version) and m["version"] == r.version
    data = (ctx / "model/model.onnx").read_bytes()
    assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["size_bytes"] == len(data)
    assert m["compression"]["method"] == compression and m["device"] == "cpu"
    assert m["producer"]["opset"] == 18 and m["producer"]["torch"] == "2.13.0"
    # the manifest's signature is the graph's, as onnx and onnxruntime see it
    inputs, outputs = graph_signature(ctx / "model/model.onnx")
    # (name, datatype, shape) of each input; the spec's request bounds (range, max_shape) ride along
    assert [{k: t[k] for k in ("name", "datatype", "shape")} for t in m["inputs"]] == inputs
    assert m["outputs"] == outputs
    assert all(set(t) <= {"name", "datatype", "shape", "range", "max_shape"} for t in m["inputs"])
    assert ("limits" in m) == (model == "minilm")
    sess = ort.InferenceSession(str(ctx / "model/model.onnx"), providers=["CPUExecutionProvider"])
    for declared, real in ((m["inputs"], sess.get_inputs()), (m["outputs"], sess.get_outputs())):
        assert [t["name"] for t in declared] == [t.name for t in real]
        assert [t["datatype"] for t in declared] == [ORT_TYPES[t.type] for t in real]
        assert [t["shape"][0] for t in declared] == [-1] * len(real)  # the batch dim
    # JSON clients send FP32/INT64: compression never changes the signature
    assert all(t["datatype"] in ("FP32", "INT64") for t in m["inputs"] + m["outputs"])
    # parity recorded and passed, against the fp32 torch model, on batch 1 and more
    p = m["parity"]
    assert p["passed"] and p["reference"] == "torch-fp32-eager" and 1 in p["batch_sizes"] and max(p["batch_sizes"]) >= 8
    for o in p["outputs"].values():
        assert o["max_abs_err"] is not None and o["max_rel_err"] is not None
        if m["task"] == "classification":
            assert o["top1_agreement"] >= (0.9 if compression == "int8" else 0.99)
        if m["task"] == "embedding":
            assert o["cosine_min"] >= (0.98 if compression == "int8" else 0.999)
    if compression == "none":
        assert r.sizes["final_bytes"] == r.sizes["fp32_bytes"]
    elif compression == "fp16":
        assert r.sizes["final_bytes"] < 0.6 * r.sizes["fp32_bytes"]
    else:
        assert r.sizes["final_bytes"] < 0.35 * r.sizes["fp32_bytes"]
        details = m["compression"]["details"]
        expected = "static" if model in ("lenet", "resnet-tiny", "digits-cnn") else "dynamic"
        assert details["method"] == expected and details["quantized_ops"]
        # minilm keeps its most sensitive layer (the first feed-forward) in fp32
        assert details["kept_fp32_nodes"] == (2 if model == "minilm" else 0)
    # the task-quality gate: every compression of a zoo model with an evaluation records it
    ev = m["evaluation"]
    if model in EVALUATED:
        assert ev["metric"] == EVALUATED[model] and ev["passed"] and ev["drop"] <= ev["max_drop"]
        assert ev["n"] > 0 and (compression != "none" or (ev["drop"] == 0 and ev["value"] == ev["reference"]))
    else:
        assert ev is None
    # it runs at a batch size it was not traced with
    feed = {t["name"]: (np.ones([3] + [d if d > 0 else 5 for d in t["shape"][1:]],
                                dtype=np.float32 if t["datatype"] == "FP32" else np.int64))
            for t in m["inputs"]}
    assert np.asarray(sess.run(None, feed)[0]).shape[0] == 3


def test_classifiers_have_labels(build_once):
    for model in ("mnist-mlp", "lenet", "resnet-tiny", "digits-cnn"):
        m = build_once(model, "none").manifest
        assert m["task"] == "classification" and len(m["labels"]) == m["outputs"][0]["shape"][-1]


@pytest.mark.slow
def test_minilm_is_the_real_sentence_transformer(build_once):
    """The exported minilm gives sentence-transformers' own embeddings of all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    from servedmodel.models.zoo.minilm import load_tokenizer, model_path, tokenize

    sentences = ["A cat sits on the mat.", "Inference servers batch requests dynamically."]
    expected = SentenceTransformer(str(model_path()), device="cpu", local_files_only=True).encode(sentences)
    ids, mask = tokenize(load_tokenizer(), sentences)
    ctx = build_once("minilm", "none").context_dir
    sess = ort.InferenceSession(str(ctx / "model/model.onnx"), providers=["CPUExecutionProvider"])
    got = np.asarray(sess.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_sentence_pairs_are_well_formed():
    from servedmodel.models.zoo.minilm import sts_pairs

    pairs = sts_pairs()
    assert len(pairs) >= 30 and len({(a, b) for _, a, b in pairs}) == len(pairs)
    scores = [s for s, _, _ in pairs]
    assert all(0 <= s <= 5 for s in scores)
    assert sum(s >= 4 for s in scores) >= 8 and sum(s <= 1 for s in scores) >= 8  # paraphrases and unrelated


@pytest.mark.slow
def test_minilm_evaluation_means_something(build_once):
    """The recorded Spearman correlation is the one measured here from the context's own
    embeddings and the hand-assigned scores (scipy), and it is high for the real model."""
    from scipy.stats import spearmanr

    from servedmodel.models.zoo.minilm import load_tokenizer, sts_pairs, tokenize

    r = build_once("minilm", "none")
    ev = r.manifest["evaluation"]
    pairs = sts_pairs()
    sess = ort.InferenceSession(str(r.context_dir / "model/model.onnx"), providers=["CPUExecutionProvider"])
    tok = load_tokenizer()

    def embed(sentences):
        ids, mask = tokenize(tok, sentences)
        return np.asarray(sess.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])

    a, b = embed([p[1] for p in pairs]), embed([p[2] for p in pairs])
    result: Any = spearmanr((a * b).sum(1), [p[0] for p in pairs])  # (scipy's result class is private)
    rho = result.statistic
    assert ev["metric"] == "spearman" and ev["n"] == len(pairs)
    assert ev["reference"] == pytest.approx(rho, abs=2e-3) and rho >= 0.8
    nn = ev["others"][0]
    assert nn["metric"] == "neighbour-agreement@3" and nn["reference"] == 1.0 and nn["n"] == 2 * len(pairs)
    i8 = build_once("minilm", "int8").manifest["evaluation"]
    assert i8["reference"] == ev["reference"] and abs(i8["drop"]) <= i8["max_drop"]
    assert i8["others"][0]["value"] >= 0.99


@pytest.mark.slow
def test_minilm_server_refuses_what_the_model_cannot_take(build_once, tmp_path):
    """The real minilm context, served by a real server process on 127.0.0.1: its manifest
    bounds (from the model's config) turn an out-of-vocabulary id and an over-budget request
    into 400s for that caller, before batching; a normal request is answered, and the server
    stays live."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from servedmodel.models.zoo.minilm import load_tokenizer, tokenize

    ctx = build_once("minilm", "none").context_dir
    m = build_once("minilm", "none").manifest
    assert [(t["name"], t["range"], t["max_shape"]) for t in m["inputs"]] == [
        ("input_ids", [0, 30521], [-1, 512]), ("attention_mask", [0, 1], [-1, 512])]
    assert m["limits"] == {"max_request_elements": 2 * 32 * 128}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEDMODEL_")}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--context", str(ctx), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=Path(__file__).resolve().parents[2],
                            env={**env, "SERVEDMODEL_LOG_LEVEL": "warning"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        infer = f"{url}/v2/models/minilm/infer"

        def body(ids, mask):
            return {"inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": list(ids.shape), "data": ids.reshape(-1).tolist()},
                {"name": "attention_mask", "datatype": "INT64", "shape": list(mask.shape),
                 "data": mask.reshape(-1).tolist()}]}

        ids, mask = (t.numpy() for t in tokenize(load_tokenizer(), ["Served models answer requests."]))
        bad = ids.copy()
        bad[0, 1] = 10 ** 9
        r = httpx.post(infer, json=body(bad, mask), timeout=60)
        assert r.status_code == 400, r.text
        assert "input_ids" in r.json()["error"] and "[0, 30521]" in r.json()["error"]
        big = np.ones((32, 512), dtype=np.int64)
        r = httpx.post(infer, json=body(big, big), timeout=60)
        assert r.status_code == 400, r.text
        assert "32768" in r.json()["error"] and "8192" in r.json()["error"]
        long = np.ones((1, 513), dtype=np.int64)
        r = httpx.post(infer, json=body(long, long), timeout=60)
        assert r.status_code == 400, r.text
        assert "input_ids" in r.json()["error"] and "maximum 512" in r.json()["error"]
        r = httpx.post(infer, json=body(ids, mask), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, 384] and abs(np.linalg.norm(out["data"]) - 1.0) < 1e-4
        assert httpx.get(url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
