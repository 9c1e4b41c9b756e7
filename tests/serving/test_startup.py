"""Startup: refuse (one clear line on stderr, exit non-zero) on a missing or corrupt model, a
sha256 mismatch, bad settings or device=cuda without CUDA; ready only after warm-up."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import onnxruntime as ort
import pytest

from conftest import ROOT, ServerProcess
from contexts import write_context


def run_server(context, env=None, args=()):
    cmd = [sys.executable, "-m", "serving", "--context", str(context), "--port", "0", *args]
    env = {"PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def ctx(tmp_path):
    return write_context(tmp_path / "ctx", "mlp")


def _refuses(result, *words):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_model_file(ctx):
    (ctx / "model" / "model.onnx").unlink()
    _refuses(run_server(ctx), "model file not found")


def test_missing_manifest(tmp_path):
    _refuses(run_server(tmp_path), "manifest not found")


def test_sha256_mismatch(ctx):
    path = ctx / "model" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _refuses(run_server(ctx), "sha256 mismatch")


def test_corrupt_model_with_matching_hash(ctx):
    import hashlib

    path = ctx / "model" / "model.onnx"
    path.write_bytes(b"not an onnx model")
    manifest = json.loads((ctx / "model" / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(b"not an onnx model").hexdigest()
    (ctx / "model" / "manifest.json").write_text(json.dumps(manifest))
    _refuses(run_server(ctx), "cannot be loaded by onnxruntime")


def test_corrupt_manifest(ctx):
    (ctx / "model" / "manifest.json").write_text("{not json")
    _refuses(run_server(ctx), "not JSON")


def test_manifest_disagrees_with_model(ctx):
    manifest = json.loads((ctx / "model" / "manifest.json").read_text())
    manifest["inputs"][0]["datatype"] = "INT64"
    (ctx / "model" / "manifest.json").write_text(json.dumps(manifest))
    _refuses(run_server(ctx), "model and manifest disagree")


def test_bad_settings_listed_together(ctx):
    result = run_server(ctx, {"SERVEDMODEL_MAX_QUEUE_SIZE": "zero",
                              "SERVEDMODEL_LOG_LEVEL": "loud", "SERVEDMODEL_DRAIN_SECONDS": "-1",
                              "SERVEDMODEL_GRPC_PORT": "grpc", "SERVEDMODEL_QUEUE_TIMEOUT_MS": "0"})
    _refuses(result, "SERVEDMODEL_MAX_QUEUE_SIZE='zero'", "SERVEDMODEL_LOG_LEVEL='loud'",
             "SERVEDMODEL_DRAIN_SECONDS='-1'", "SERVEDMODEL_GRPC_PORT='grpc'",
             "SERVEDMODEL_QUEUE_TIMEOUT_MS='0'")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this machine has CUDA")
def test_cuda_configured_but_absent(ctx):
    _refuses(run_server(ctx, {"SERVEDMODEL_DEVICE": "cuda"}), "device=cuda",
             "CUDAExecutionProvider")


def test_ready_only_after_warm_up_live_before(tmp_path):
    """A slow model: /live answers 200 while the warm-up runs and /ready is 503 until it ends."""
    ctx = write_context(tmp_path / "slow", "slow", max_batch_size=32, warmup=(1, 8, 32, 32))
    server = ServerProcess(ctx)
    try:
        seen = []
        while server.proc.poll() is None:
            try:
                live = httpx.get(server.url + "/v2/health/live", timeout=2).status_code
                ready = httpx.get(server.url + "/v2/health/ready", timeout=2)
                model_ready = httpx.get(server.url + "/v2/models/test-slow/ready", timeout=2)
            except httpx.TransportError:
                continue
            seen.append((live, ready.status_code, model_ready.status_code))
            if ready.status_code == 200:
                break
        assert seen and all(live == 200 for live, _, _ in seen)
        assert (200, 503, 503) in seen, seen           # live before ready
        assert seen[-1] == (200, 200, 200)
        infer = httpx.post(server.url + "/v2/models/test-slow/infer", timeout=10, json={
            "inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32",
                        "data": [1.0] * 512}]})
        assert infer.status_code == 200
    finally:
        assert server.stop() == 0
