"""The build measures model load + warm-up (models/startup.py) and keeps it beside the
manifest: the context stays byte-identical and the version unchanged whatever the timing."""
from __future__ import annotations

import json

import numpy as np
import pytest

import servedmodel.models as models

# At import, while this folder's conftest is the one named `conftest` (inside a test, with
# xdist, another folder's may be).
from conftest import cache_key_of
from servedmodel.models import startup


def test_build_records_measured_load_and_warmup_outside_the_manifest(build_once):
    r = build_once("lenet", "int8")
    s = r.startup
    assert s["load_seconds"] > 0 and s["warmup_seconds"] > 0
    # the session's memory peak holds at least the weights (the int8 model's file, mostly them)
    assert s["peak_memory_bytes"] >= (r.context_dir / "model" / "model.onnx").stat().st_size
    assert s["provider"] == "CPUExecutionProvider"
    assert s["batch_sizes"] == startup.warmup_batch_sizes(r.manifest)
    assert 1 in s["batch_sizes"] and r.manifest["batching"]["max_batch_size"] in s["batch_sizes"]
    assert "startup" in r.steps  # timed as a pipeline step of its own
    # Not in the manifest, neither the returned dict nor the file in the context.
    assert "startup" not in r.manifest
    assert "startup" not in json.loads((r.context_dir / "model" / "manifest.json").read_text())
    assert r.summary()["startup"] == s


def test_a_cache_hit_reports_the_figures_measured_with_the_context(build_once, cache_dir, tmp_path):
    build_once("mnist-mlp", "none")  # the entry exists (other tests may have rebuilt it since)
    one = models.build("mnist-mlp", "none", tmp_path / "one", cache_dir=cache_dir)
    two = models.build("mnist-mlp", "none", tmp_path / "two", cache_dir=cache_dir)
    assert one.cache_hit and two.cache_hit
    assert one.startup == two.startup and one.startup["load_seconds"] > 0  # read back, not re-measured


def test_an_entry_cached_before_startup_was_measured_gets_it_once(cache_dir, tmp_path):
    import json

    from servedmodel.models import cache as cache_mod

    models.build("lenet", "none", tmp_path / "first", cache_dir=cache_dir)
    key = cache_key_of("lenet", "none", cache_dir=cache_dir)
    result = cache_mod.entry_dir(cache_mod.cache_root(cache_dir), key) / "result.json"
    record = json.loads(result.read_text())
    record.pop("startup")
    record["sizes"].pop("model_layer_gzip_bytes")
    result.write_text(json.dumps(record))  # as an older build wrote it
    one = models.build("lenet", "none", tmp_path / "one", cache_dir=cache_dir)
    two = models.build("lenet", "none", tmp_path / "two", cache_dir=cache_dir)
    assert one.cache_hit and one.startup["load_seconds"] > 0 and one.sizes["model_layer_gzip_bytes"] > 0
    assert two.startup == one.startup and two.sizes == one.sizes  # measured once, then kept


def test_an_entry_cached_before_the_memory_peak_was_measured_gets_it_once(cache_dir, tmp_path):
    from servedmodel.models import cache as cache_mod

    models.build("lenet", "none", tmp_path / "first", cache_dir=cache_dir)
    key = cache_key_of("lenet", "none", cache_dir=cache_dir)
    result = cache_mod.entry_dir(cache_mod.cache_root(cache_dir), key) / "result.json"
    record = json.loads(result.read_text())
    record["startup"].pop("peak_memory_bytes")
    result.write_text(json.dumps(record))  # as a build before the memory peak wrote it
    one = models.build("lenet", "none", tmp_path / "one", cache_dir=cache_dir)
    two = models.build("lenet", "none", tmp_path / "two", cache_dir=cache_dir)
    assert one.cache_hit and one.startup["peak_memory_bytes"] > 0
    assert two.startup == one.startup  # measured once, then kept


def test_the_decryption_figure_is_measured_once_and_kept_sealed_or_not(cache_dir, tmp_path):
    """decrypt_seconds (what opening the model encrypted costs) is measured with the other start-up
    figures and kept in the cache's record: a later sealing reports that figure, not a new timing,
    so a cold-start budget that adds it (components/coldstart.py) is the same on every rebuild, and
    a record from before it was measured gets it once."""
    from servedmodel.models import cache as cache_mod

    plain = models.build("lenet", "none", tmp_path / "plain", cache_dir=cache_dir)
    assert plain.startup["decrypt_seconds"] >= 0
    key_file = tmp_path / "keys" / "local.key"
    key_file.parent.mkdir()
    enc = models.Encryption("local", key_file=key_file, served_name="digits")
    sealed = [models.build("lenet", "none", tmp_path / f"sealed{i}", cache_dir=cache_dir, encryption=enc)
              for i in range(2)]
    assert [s.startup["decrypt_seconds"] for s in sealed] == [plain.startup["decrypt_seconds"]] * 2
    key = cache_key_of("lenet", "none", cache_dir=cache_dir)
    result = cache_mod.entry_dir(cache_mod.cache_root(cache_dir), key) / "result.json"
    record = json.loads(result.read_text())
    record["startup"].pop("decrypt_seconds")
    result.write_text(json.dumps(record))  # as a build before it was measured wrote it
    one = models.build("lenet", "none", tmp_path / "one", cache_dir=cache_dir)
    two = models.build("lenet", "none", tmp_path / "two", cache_dir=cache_dir, encryption=enc)
    assert one.startup["decrypt_seconds"] >= 0 and two.startup == one.startup


def _dense_model(path, n: int) -> int:
    """y = x @ W with W n x n fp32; returns the bytes of W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((n, n), 0.5, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return n * n * 4


def test_the_memory_peak_follows_the_weights_and_the_warm_up_batches(tmp_path):
    """Measured, not estimated: 64 MiB of weights show as at least 64 MiB more than 1 MiB of
    weights, and a warm-up at batch 32768 of a 512-wide layer (a 64 MiB output) as at least
    64 MiB more than the same model warmed up at batch 1. (It is a peak: with big weights, the
    load's, when the file and the weights are both held, can exceed the run's.)"""
    def manifest(n, max_batch):
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n]}],
                "batching": {"max_batch_size": max_batch, "warmup_batch_sizes": []}}

    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    small_w, big_w = _dense_model(small, 512), _dense_model(big, 4096)
    small_peak = startup.peak_memory(small, manifest(512, 1))
    big_peak = startup.peak_memory(big, manifest(4096, 1))
    assert small_peak >= small_w and big_peak >= big_w
    assert big_peak - small_peak >= big_w - small_w
    batched_peak = startup.peak_memory(small, manifest(512, 32768))
    assert batched_peak - small_peak >= 64 * 1024 ** 2


def test_warmup_feeds_follow_the_manifest_signature():
    manifest = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                           {"name": "x", "datatype": "FP16", "shape": [-1, 3]}],
                "batching": {"max_batch_size": 8, "warmup_batch_sizes": [4, 16]}}
    assert startup.warmup_batch_sizes(manifest) == [1, 4, 8]  # 16 > max batch is never run
    feeds = startup.warmup_feeds(manifest, 4)
    assert feeds["ids"].shape == (4, 1) and feeds["ids"].dtype == np.int64
    assert feeds["x"].shape == (4, 3) and feeds["x"].dtype == np.float16
    unbatched = {"inputs": manifest["inputs"], "batching": {"max_batch_size": 0, "warmup_batch_sizes": []}}
    assert startup.warmup_batch_sizes(unbatched) == [1]


def test_a_model_onnxruntime_cannot_load_is_an_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="ONNXRuntimeError"):  # whatever onnxruntime raises (measure's docstring)
        startup.measure(bad, {"inputs": [], "batching": {}})


def test_model_layer_bytes_is_the_gzip_of_the_model_folder(build_once):
    import gzip

    r = build_once("lenet", "int8")
    measured = r.sizes["model_layer_gzip_bytes"]
    assert measured == startup.model_layer_bytes(r.context_dir)  # deterministic
    model = (r.context_dir / "model" / "model.onnx").read_bytes()
    # The tar adds headers and the manifest; gzip of the weights alone is the floor.
    floor = len(gzip.compress(model, compresslevel=6))
    assert floor < measured < floor + 8192
