"""Small build contexts made with onnx.helper: fast, and shaped for edge cases.

Each follows docs/architecture.md section 2 (model/model.onnx + model/manifest.json)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
_T = {"FP32": TensorProto.FLOAT, "INT64": TensorProto.INT64, "FP16": TensorProto.FLOAT16,
      "BOOL": TensorProto.BOOL}


def _vi(name, datatype, shape):
    # -1: an unnamed dynamic dimension; a string: a named one (shared names must agree)
    return helper.make_tensor_value_info(name, _T[datatype], [None if d == -1 else d for d in shape])


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", [_vi(*i) for i in inputs], [_vi(*o) for o in outputs],
                              initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def mlp_weights():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((784, 10)).astype(np.float32) * 0.05,
            rng.standard_normal(10).astype(np.float32))


def mlp_model():
    w, b = mlp_weights()
    nodes = [helper.make_node("MatMul", ["input", "W"], ["h"]),
             helper.make_node("Add", ["h", "B"], ["logits"])]
    return _model(nodes, [("input", "FP32", [-1, 784])], [("logits", "FP32", [-1, 10])],
                  [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])


def multi_model():
    """Two inputs (FP32 and INT64), two outputs: sum = a + float(b), a_copy = a."""
    nodes = [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["a", "bf"], ["sum"]),
             helper.make_node("Identity", ["a"], ["a_copy"])]
    return _model(nodes, [("a", "FP32", [-1, 4]), ("b", "INT64", [-1, 4])],
                  [("sum", "FP32", [-1, 4]), ("a_copy", "FP32", [-1, 4])])


def log_model():
    """y = log(x): log(0) = -inf, log(-1) = nan; for NaN/Inf outputs. A dynamic second
    dimension, for shapes whose element count overflows."""
    return _model([helper.make_node("Log", ["x"], ["y"])], [("x", "FP32", [-1, -1])],
                  [("y", "FP32", [-1, -1])])


def peak_model():
    """y = -log(x) with a dynamic second dimension: the intermediate log(x) comes from
    onnxruntime's arena, for the tests of memory after a run bigger than the warm-up."""
    nodes = [helper.make_node("Log", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])]
    return _model(nodes, [("x", "FP32", [-1, -1])], [("y", "FP32", [-1, -1])])


def half_model():
    """FP16 in, FP32 out (y = float(h) * 2)."""
    nodes = [helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["hf", "hf"], ["y"])]
    return _model(nodes, [("h", "FP16", [-1, 2])], [("y", "FP32", [-1, 2])])


def flags_model():
    """BOOL in and out: y = x * float(m), nm = not m, n = int64(m) (INT64 out)."""
    nodes = [helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "mf"], ["y"]),
             helper.make_node("Not", ["m"], ["nm"]),
             helper.make_node("Cast", ["m"], ["n"], to=TensorProto.INT64)]
    return _model(nodes, [("x", "FP32", [-1, 3]), ("m", "BOOL", [-1, 3])],
                  [("y", "FP32", [-1, 3]), ("nm", "BOOL", [-1, 3]), ("n", "INT64", [-1, 3])])


def slow_model(width: int = 512, depth: int = 1000):
    """y = x @ I @ I ... (depth MatMuls with the identity): exact output == input, and slow
    enough (milliseconds a row) to keep requests in flight for overload and shutdown tests."""
    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "I")
    nodes, prev = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "I"], [out]))
        prev = out
    return _model(nodes, [("x", "FP32", [-1, width])], [("y", "FP32", [-1, width])], [eye])


def paced_model():
    """minilm's cost per row at batch 32 (~10 ms on 2 CPUs; ~0.35 s a full batch), exact
    output == input: for closed-loop load tests of the queue-time budget."""
    return slow_model(512, 300)


def brisk_model():
    """slow_model 50 times shallower: a batch of 32 takes milliseconds (not inline) but a row
    ~25 times less than the 2 ms under which the model's threads do not spin
    (SPIN_MIN_ITEM_SECONDS)."""
    return slow_model(512, 20)


def wide_model():
    """slow_model twice as wide: four times the work a row (~16 ms on 2 CPUs), with as few
    nodes as slow_model, so it loads as fast."""
    return slow_model(1024, 1000)


def slower_model():
    """slow_model four times deeper: calls that stay in flight long enough for a test to see
    several of them at once on a fast, idle machine (the gRPC drain test)."""
    return slow_model(512, 4000)


def gather_model(vocab: int = 100):
    """Token ids -> embedding sums: y[b, s] = sum(E[ids[b, s]]) + mask[b, s]. An id outside
    [0, vocab) fails the run (as an out-of-vocabulary id fails a transformer); ids and mask
    share the named dimensions "batch" and "sequence"."""
    table = numpy_helper.from_array(
        np.arange(vocab * 4, dtype=np.float32).reshape(vocab, 4) / 100, "E")
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]),
             helper.make_node("ReduceSum", ["emb", "axes"], ["s"], keepdims=0),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["s", "m"], ["y"])]
    dims = ["batch", "sequence"]
    return _model(nodes, [("ids", "INT64", dims), ("mask", "INT64", dims)],
                  [("y", "FP32", dims)], [table, axes])


MODELS = {"slow": slow_model, "slower": slower_model, "brisk": brisk_model, "wide": wide_model, "paced": paced_model,
          "mlp": mlp_model, "multi": multi_model,
          "log": log_model, "peak": peak_model, "half": half_model, "flags": flags_model, "gather": gather_model}


def write_context(out: Path, kind: str, name: str | None = None, *, max_batch_size: int = 32,
                  max_queue_delay_ms: float = 2.0, warmup=(1, 8)) -> Path:
    model = MODELS[kind]()
    out = Path(out)
    (out / "model").mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (out / "model" / "model.onnx").write_bytes(data)
    g = model.graph

    def spec(vi):
        dt = {v: k for k, v in _T.items()}[vi.type.tensor_type.elem_type]
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        return {"name": vi.name, "datatype": dt, "shape": shape}

    manifest = {
        "schema_version": 1, "name": name or f"test-{kind}",
        "version": hashlib.sha256(data).hexdigest()[:16], "platform": "onnxruntime_onnx",
        "device": "cpu", "model_file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data), "inputs": [spec(v) for v in g.input],
        "outputs": [spec(v) for v in g.output], "labels": None,
        "batching": {"max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms,
                     "warmup_batch_sizes": list(warmup)},
        "compression": {"method": "none", "details": {}},
        "parity": {"reference": "onnx.helper", "passed": True},
        "producer": {"onnx": onnx.__version__, "opset": OPSET, "exporter": "onnx.helper"},
    }
    (out / "model" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
