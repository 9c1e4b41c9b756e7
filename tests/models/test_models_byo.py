"""Bring your own model: factories defined only in a test file, loaded through FILE.py:FACTORY,
covering what the zoo does not (attention, recurrent layers, several inputs and outputs)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import FACTORIES, cli_json, run_cli


def ref(factory: str) -> str:
    return f"{FACTORIES}:{factory}"


@pytest.mark.parametrize("factory, compression, inputs, outputs", [
    ("conv_net", "int8", [("image", "FP32", [-1, 3, 20, 20])], [("scores", "FP32", [-1, 5])]),
    ("attention", "none", [("tokens", "FP32", [-1, -1, 32])],
     [("hidden", "FP32", [-1, -1, 32]), ("attention", "FP32", [-1, -1, -1])]),
    ("attention", "int8", [("tokens", "FP32", [-1, -1, 32])],
     [("hidden", "FP32", [-1, -1, 32]), ("attention", "FP32", [-1, -1, -1])]),
    ("recurrent", "fp16", [("sequence", "FP32", [-1, 9, 16])], [("logits", "FP32", [-1, 4])]),
    ("multi_io", "none", [("features", "FP32", [-1, 12]), ("ids", "INT64", [-1, 6])],
     [("mixed", "FP32", [-1, 8]), ("score", "FP32", [-1, 1]), ("argmax", "INT64", [-1])]),
])
def test_byo_model(build_once, factory, compression, inputs, outputs):
    r = build_once(ref(factory), compression)
    m = r.manifest
    assert [(t["name"], t["datatype"], t["shape"]) for t in m["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in m["outputs"]] == outputs
    assert m["parity"]["passed"] and set(m["parity"]["outputs"]) == {o[0] for o in outputs}
    sess = ort.InferenceSession(str(r.context_dir / "model/model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [o[0] for o in outputs]


def test_model_without_batch_dim(build_once):
    m = build_once(ref("unbatched"), "none").manifest
    assert m["batching"]["max_batch_size"] == 0 and m["batching"]["warmup_batch_sizes"] == [1]
    assert m["inputs"] == [{"name": "points", "datatype": "FP32", "shape": [6, 3]}]
    assert m["outputs"] == [{"name": "distances", "datatype": "FP32", "shape": [6, 6]}]


def test_attention_runs_at_other_sequence_lengths(build_once):
    ctx = build_once(ref("attention"), "none").context_dir
    sess = ort.InferenceSession(str(ctx / "model/model.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(0).normal(size=(5, 13, 32)).astype(np.float32)
    hidden, attn = (np.asarray(o) for o in sess.run(None, {"tokens": tokens}))
    assert hidden.shape == (5, 13, 32) and attn.shape == (5, 13, 13)


def test_cli_builds_a_factory_file(cache_dir, tmp_path):
    proc = run_cli("build", "--model", ref("multi_io"), "--compression", "fp16", "--out", str(tmp_path / "ctx"),
                   "--json", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    out = cli_json(proc)
    assert out["ok"] and out["name"] == "byo-multi" and out["compression"] == "fp16"
    assert (tmp_path / "ctx/model/model.onnx").is_file()
    assert "[" in proc.stderr and "export" in proc.stderr  # progress went to stderr


def test_request_bounds_reach_the_manifest(build_once):
    """A spec's input_ranges / input_max_shapes / max_request_elements are written in the
    format the server reads (serving/manifest.py), and are part of the content version; a
    spec without them gets none of these keys."""
    import json

    from servedmodel.models.package import sha256_bytes, version_from_hashes
    from servedmodel.serving.manifest import load_manifest

    r = build_once(ref("bounded"), "none")
    m = r.manifest
    assert m["inputs"] == [
        {"name": "ids", "datatype": "INT64", "shape": [-1, -1], "range": [0, 49], "max_shape": [-1, 16]},
        {"name": "mask", "datatype": "INT64", "shape": [-1, -1], "range": [0, 1], "max_shape": [-1, 16]}]
    assert m["limits"] == {"max_request_elements": 64}
    assert list(m).index("limits") == list(m).index("batching") + 1
    assert json.loads((r.context_dir / "model/manifest.json").read_text()) == m
    served = load_manifest(r.context_dir)
    assert [(t.name, t.range, t.max_shape) for t in served.inputs] == [
        ("ids", (0, 49), (-1, 16)), ("mask", (0, 1), (-1, 16))]
    assert served.max_request_elements == 64
    # the bounds are in the version: another budget is another model version
    hashes = {p.relative_to(r.context_dir).as_posix(): sha256_bytes(p.read_bytes())
              for p in r.context_dir.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert version_from_hashes(hashes, m) == r.version
    for change in ({**m, "limits": {"max_request_elements": 65}},
                   {**m, "inputs": [{**m["inputs"][0], "range": [0, 50]}, m["inputs"][1]]},
                   {**m, "inputs": [{**m["inputs"][0], "max_shape": [-1, 17]}, m["inputs"][1]]}):
        assert version_from_hashes(hashes, change) != r.version
    plain = build_once(ref("multi_io"), "none").manifest
    assert "limits" not in plain
    assert all(set(t) == {"name", "datatype", "shape"} for t in plain["inputs"])
