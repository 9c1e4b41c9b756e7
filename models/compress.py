"""Step 3, compress: fp16 conversion or int8 quantization with onnxruntime's tools.

Options are frozen dataclasses with named presets; every converter/quantizer argument is
passed explicitly (their defaults changed between onnxruntime versions).

The known trap: onnxruntime's quantizer pre-processing (`quant_pre_process`) runs its symbolic
shape inference, which fails on graphs from the pinned dynamo exporter (minilm: `_infer_Expand`
gets no shape and raises TypeError). The exporter already writes complete shapes, with named
symbolic dims, and ONNX shape inference completes them, so pre-processing runs with
`skip_symbolic_shape=True` and keeps ONNX shape inference and onnxruntime's graph optimisation
(Conv+BatchNorm folding etc.), which is what the quantizer needs.

onnx, onnxruntime's tools and torch are imported inside the functions that use them: only a
build that compresses needs them.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from .errors import BuildError
from .export import strip_metadata


@dataclass(frozen=True)
class Fp16Options:
    """onnxruntime.transformers.float16.convert_float_to_float16 settings.

    keep_io_types  keep FP32 graph inputs/outputs (JSON clients cannot send FP16); casts are
                   inserted at the edges
    op_block_list  ops kept in fp32 (None: the converter's own list)
    """

    keep_io_types: bool = True
    min_positive_val: float = 5.96e-08
    max_finite_val: float = 65504.0
    op_block_list: tuple[str, ...] | None = None
    force_fp16_initializers: bool = False

    def __post_init__(self) -> None:
        if not self.keep_io_types:
            raise ValueError("Fp16Options.keep_io_types must be True: the server's clients send FP32")


@dataclass(frozen=True)
class Int8Options:
    """onnxruntime.quantization settings.

    method          "dynamic": weights int8 ahead of time, activations quantized per batch at
                    run time (matmul-heavy models: MLPs, transformers); "static": QDQ with
                    activation ranges calibrated on the spec's calibration_inputs (CNNs)
    op_types        ops to quantize (dynamic: MatMul/Gemm and the embedding Gather)
    per_channel     one scale per output channel of each weight (more accurate; for minilm
                    it lifts the worst cosine from 0.953 to 0.989 at the same size)
    reduce_range    7-bit weights, against VPMADDUBSW saturation on AVX2 without VNNI; off:
                    measured no better with per-channel weights, and slower
    """

    method: str
    op_types: tuple[str, ...] | None
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "QInt8"
    activation_type: str = "QUInt8"  # static only; dynamic always uses uint8 activations
    calibrate_method: str = "MinMax"  # static only

    def __post_init__(self) -> None:
        if self.method not in ("dynamic", "static"):
            raise ValueError(f"Int8Options.method must be 'dynamic' or 'static', got {self.method!r}")
        if self.weight_type not in ("QInt8", "QUInt8") or self.activation_type not in ("QInt8", "QUInt8"):
            raise ValueError("Int8Options weight_type/activation_type must be QInt8 or QUInt8")
        if self.calibrate_method not in ("MinMax", "Entropy", "Percentile"):
            raise ValueError(f"Int8Options.calibrate_method {self.calibrate_method!r} is not supported")


FP16 = Fp16Options()
INT8_DYNAMIC = Int8Options(method="dynamic", op_types=("MatMul", "Gemm", "Gather"))
INT8_STATIC = Int8Options(method="static", op_types=None)
PRESETS: dict[str, Any] = {"fp16": FP16, "int8-dynamic": INT8_DYNAMIC, "int8-static": INT8_STATIC}


@dataclass(frozen=True)
class CompressResult:
    path: Path
    details: dict = field(default_factory=dict)


def topological_sort(graph) -> None:
    """Order nodes so each comes after the producers of its inputs (stable otherwise).

    The fp16 converter appends the Cast nodes for keep_io_types at the end of the graph;
    onnxruntime copes, but onnx.checker (rightly) rejects such a graph.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(x in available for x in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an outer-scope name: leave the rest as it was
            ordered.extend(rest)
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _finish(model, out_path: Path) -> int:
    import onnx

    strip_metadata(model)
    topological_sort(model.graph)
    onnx.checker.check_model(model, full_check=False)
    data = model.SerializeToString(deterministic=True)
    Path(out_path).write_bytes(data)
    return len(data)


def to_fp16(spec, src: Path, out_path: Path, options: Fp16Options = FP16) -> CompressResult:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model16 = convert_float_to_float16(
        model, min_positive_val=options.min_positive_val, max_finite_val=options.max_finite_val,
        keep_io_types=options.keep_io_types, disable_shape_infer=False,
        op_block_list=list(options.op_block_list) if options.op_block_list is not None else None,
        node_block_list=None, force_fp16_initializers=options.force_fp16_initializers,
        force_fp16_inputs=None, use_bfloat16_as_blocked_nodes_dtype=False)
    _finish(model16, out_path)
    return CompressResult(out_path, {"converter": "onnxruntime.transformers.float16", **asdict(options)})


def preprocess(src: Path, dst: Path) -> None:
    """onnxruntime's recommended pre-processing before quantization (see module docstring)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_optimization=False, skip_onnx_shape=False,
                      skip_symbolic_shape=True, auto_merge=False, int_max=2**31 - 1,
                      guess_output_rank=False, verbose=0, save_as_external_data=False)


class _Calibration:
    """The spec's calibration batches as onnxruntime's CalibrationDataReader protocol."""

    def __init__(self, spec):
        self._feeds = [dict(zip(spec.input_names, (t.detach().cpu().numpy() for t in batch)))
                       for batch in spec.calibration_inputs]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def nodes_of_modules(spec, model, names) -> list[str]:
    """The MatMul/Gemm nodes computing the nn.Linear layers under the named submodules.

    The exporter folds weights into anonymous constants and its optimiser drops the module
    scopes, so nodes are found by their weights' values: a Linear's weight W appears as the
    initializer W^T (MatMul) or W (Gemm).
    """
    import torch
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            consumers.setdefault(n.input[1], []).append(n.name)
    by_shape: dict[tuple, list[str]] = {}
    for name in consumers:
        by_shape.setdefault(tuple(inits[name].dims), []).append(name)
    modules = dict(spec.module.named_modules())
    found: list[str] = []
    for prefix in names:
        linears = [(f"{prefix}.{k}" if k else prefix, m) for k, m in modules[prefix].named_modules()
                   if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise BuildError(spec.name, "compress", f"int8_keep_fp32: {prefix!r} has no nn.Linear layers")
        for lname, lin in linears:
            w = lin.weight.detach().cpu().numpy()
            hits = [init for cand in (w.T, w) for init in by_shape.get(tuple(cand.shape), [])
                    if np.array_equal(numpy_helper.to_array(inits[init]), cand)]
            if not hits:
                raise BuildError(spec.name, "compress",
                                 f"int8_keep_fp32: the weights of {lname!r} are not in the graph")
            found.extend(node for init in hits for node in consumers[init])
    return sorted(set(found))


def to_int8(spec, src: Path, out_path: Path, options: Int8Options) -> CompressResult:
    import onnx
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory(prefix="servedmodel-quant-") as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "quant.onnx"
        # Drop the exporter's value_info first: onnxruntime's optimiser in pre-processing
        # rewrites nodes (e.g. transposes Gemm weights), and stale value_info then contradicts
        # the re-inferred shapes ("Inferred shape and existing shape differ").
        fresh = onnx.load(str(src))
        del fresh.graph.value_info[:]
        stripped = Path(tmp) / "fp32.onnx"
        onnx.save(fresh, str(stripped))
        preprocess(stripped, pre)
        keep = nodes_of_modules(spec, onnx.load(str(pre)), spec.int8_keep_fp32) if spec.int8_keep_fp32 else []
        weight_type = getattr(q.QuantType, options.weight_type)
        activation_type = getattr(q.QuantType, options.activation_type)
        if options.method == "dynamic":
            q.quantize_dynamic(
                pre, raw, op_types_to_quantize=list(options.op_types) if options.op_types else None,
                per_channel=options.per_channel, reduce_range=options.reduce_range,
                weight_type=weight_type, nodes_to_quantize=None, nodes_to_exclude=keep or None,
                use_external_data_format=False,
                extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "EnableSubgraph": False})
        else:
            if not spec.calibration_inputs:
                raise BuildError(spec.name, "compression", "static int8 needs calibration_inputs in the ModelSpec")
            q.quantize_static(
                # _Calibration has the reader's two methods; it does not subclass it, so that this
                # module loads without onnxruntime.
                pre, raw, calibration_data_reader=cast(q.CalibrationDataReader, _Calibration(spec)),
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(options.op_types) if options.op_types else None,
                per_channel=options.per_channel, reduce_range=options.reduce_range,
                activation_type=activation_type, weight_type=weight_type,
                nodes_to_quantize=None, nodes_to_exclude=keep or None, use_external_data_format=False,
                calibrate_method=getattr(q.CalibrationMethod, options.calibrate_method),
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                               "EnableSubgraph": False, "CalibMovingAverage": False},
                calibration_cache_path=None)
        model = onnx.load(str(raw))
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in (
        "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
        "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul")})
    if not ops:
        raise BuildError(spec.name, "compression", f"int8 ({options.method}) quantized nothing: the model has "
                         f"none of the ops {list(options.op_types or ['(all supported)'])}")
    _finish(model, out_path)
    details = {"quantizer": f"onnxruntime.quantization.quantize_{options.method}",
               "preprocess": "quant_pre_process(skip_symbolic_shape=True)", **asdict(options),
               "calibration_batches": len(spec.calibration_inputs) if options.method == "static" else 0,
               "quantized_ops": ops, "kept_fp32": list(spec.int8_keep_fp32), "kept_fp32_nodes": len(keep)}
    details["op_types"] = list(details["op_types"]) if details["op_types"] else None
    return CompressResult(out_path, details)


def int8_options(spec) -> Int8Options:
    return INT8_STATIC if spec.resolved_int8_method() == "static" else INT8_DYNAMIC


def compress(spec, compression: str, src: Path, out_path: Path) -> CompressResult:
    """Compress the fp32 model at `src` into `out_path`. Raises BuildError(step="compress")."""
    try:
        if compression == "fp16":
            return to_fp16(spec, src, out_path)
        if compression == "int8":
            return to_int8(spec, src, out_path, int8_options(spec))
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - converters raise anything
        raise BuildError(spec.name, "compress",
                         f"{compression}: {type(e).__name__}: {' '.join(str(e).split())[:400]}") from None
    raise BuildError(spec.name, "compression", f"unsupported compression {compression!r}")
