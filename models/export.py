"""Step 1, export: a ModelSpec's torch module to a checked, shape-inferred ONNX model.

Uses the pinned torch's own exporter (`torch.onnx.export(dynamo=True)`), every argument
passed explicitly. The result is normalised so that the same model always gives the same
bytes: exporter metadata (stack traces with file paths, FX node dumps) is stripped and the
graph's inputs and outputs carry the spec's names.

torch and onnx are imported inside the functions that use them: other modules import this one
(flatten_outputs, the datatype table) and `import models` must not load them.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import DATATYPES
from .errors import BuildError

# ONNX tensor element types -> the V2 protocol's datatype names.
V2_DATATYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}
# Every name must be one the server's table (serving/contract.py) knows.
assert set(V2_DATATYPES.values()) <= set(DATATYPES), set(V2_DATATYPES.values()) - set(DATATYPES)


@dataclass(frozen=True)
class ExportOptions:
    """How to export. `opset` is recorded in the manifest.

    opset     ONNX opset of the default domain (18: what onnxruntime's quantizer and the fp16
              converter handle best with this torch; newer ops are not needed by the zoo)
    optimize  let the exporter run its graph optimisations (constant folding, fusions)
    """

    opset: int = 18
    optimize: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.opset, int) and 17 <= self.opset <= 23):
            raise ValueError(f"ExportOptions.opset must be an integer in [17, 23], got {self.opset!r}")


DEFAULT_EXPORT = ExportOptions()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for dynamic dims

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    size_bytes: int


def flatten_outputs(out: Any) -> list:
    """Eager outputs flattened in the exporter's (pytree) order: tensors, nested tuples/lists."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        flat: list = []
        for o in out:
            flat.extend(flatten_outputs(o))
        return flat
    raise TypeError(f"outputs must be tensors or (nested) tuples/lists of tensors, got {type(out).__name__}")


def tensor_infos(values) -> tuple[TensorInfo, ...]:
    """Graph inputs/outputs as (name, V2 datatype, shape with -1 for dynamic dims)."""
    infos = []
    for v in values:
        tt = v.type.tensor_type
        dtype = V2_DATATYPES.get(tt.elem_type, f"ONNX_TYPE_{tt.elem_type}")
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        infos.append(TensorInfo(v.name, dtype, shape))
    return tuple(infos)


def strip_metadata(model) -> None:
    """Remove exporter metadata: it holds stack traces with file paths and FX dumps, which
    would make the bytes depend on where the code lives. Nothing at run time reads it."""
    def clear(item) -> None:
        item.doc_string = ""
        del item.metadata_props[:]

    def clean_nodes(nodes) -> None:
        for n in nodes:
            clear(n)
            for a in n.attribute:
                if a.HasField("g"):
                    clean_graph(a.g)
                for sg in a.graphs:
                    clean_graph(sg)

    def clean_graph(g) -> None:
        clear(g)
        for item in (*g.input, *g.output, *g.value_info, *g.initializer):
            clear(item)
        clean_nodes(g.node)

    clear(model)
    clean_graph(model.graph)
    for f in model.functions:
        clear(f)
        clean_nodes(f.node)


def _rename_in_graph(g, mapping: dict[str, str]) -> None:
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in mapping:
                n.input[i] = mapping[x]
        for i, x in enumerate(n.output):
            if x in mapping:
                n.output[i] = mapping[x]
        for a in n.attribute:
            if a.HasField("g"):
                _rename_in_graph(a.g, mapping)
            for sg in a.graphs:
                _rename_in_graph(sg, mapping)
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            if v.name in mapping:
                v.name = mapping[v.name]
    for t in g.initializer:
        if t.name in mapping:
            t.name = mapping[t.name]


def _names_in_graph(g, acc: set[str]) -> set[str]:
    for n in g.node:
        acc.update(n.input)
        acc.update(n.output)
        for a in n.attribute:
            if a.HasField("g"):
                _names_in_graph(a.g, acc)
            for sg in a.graphs:
                _names_in_graph(sg, acc)
    acc.update(v.name for v in (*g.input, *g.output, *g.value_info))
    acc.update(t.name for t in g.initializer)
    return acc


def rename_io(model, input_names, output_names) -> None:
    """Give the graph's inputs and outputs the spec's names.

    Done here rather than through the exporter's input_names/output_names: the exporter renames
    without checking for clashes, and a user name equal to an internal value's name (minilm's
    "embedding" is also the name of the word-embedding Gather's output) yields a graph that is
    not in SSA form and fails onnx.checker.
    """
    g = model.graph
    mapping: dict[str, str] = {}
    for v, new in zip(g.input, input_names):
        mapping[v.name] = new
    for v, new in zip(g.output, output_names):
        mapping[v.name] = new
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return
    used = _names_in_graph(g, set())
    targets = set(mapping.values())
    clash = {}
    for name in sorted(used & targets):
        if name in mapping:  # renamed away itself
            continue
        k = 0
        while f"{name}__{k}" in used or f"{name}__{k}" in targets:
            k += 1
        clash[name] = f"{name}__{k}"
        used.add(clash[name])
    if clash:
        _rename_in_graph(g, clash)
        mapping = {clash.get(old, old): new for old, new in mapping.items()}
    _rename_in_graph(g, mapping)


def _reason(e: BaseException) -> str:
    """The innermost cause's first line: the exporter wraps torch.export's error (the one that
    says what in the model cannot be traced) in a generic 'Failed to export' message."""
    inner = e
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    where = "" if inner is e else f" (in {type(e).__name__})"
    return f"{type(inner).__name__}: {first[:300]}{where}"


def export(spec, out_path: Path, options: ExportOptions = DEFAULT_EXPORT) -> ExportResult:
    """Export `spec.module` to `out_path` (ONNX, single file). Raises BuildError(step="export")."""
    import onnx
    import torch

    def fail(msg: str) -> BuildError:
        return BuildError(spec.name, "export", msg)

    module = spec.module.eval()
    try:
        with torch.no_grad():
            eager = flatten_outputs(module(*spec.example_inputs))
    except Exception as e:  # noqa: BLE001 - the user's forward() may raise anything
        raise fail(f"module(*example_inputs) raised {type(e).__name__}: {e}") from None
    if len(eager) != len(spec.output_names):
        raise fail(f"the module returns {len(eager)} tensor(s) but output_names has "
                   f"{len(spec.output_names)}: {list(spec.output_names)}")

    dims: dict[str, Any] = {}
    dynamic_shapes = []
    for name in spec.input_names:
        axes = {}
        for d, dim_name in spec.dynamic_axes.get(name, {}).items():
            if dim_name not in dims:
                # min=1: a batch or sequence of one is valid; named Dims make torch.export fail
                # loudly if the model constrains a dim we promised the server is dynamic.
                dims[dim_name] = torch.export.Dim(dim_name, min=1, max=None)
            axes[d] = dims[dim_name]
        dynamic_shapes.append(axes or None)

    log = io.StringIO()
    try:
        # The exporter prints its progress and, on failure, graph dumps: keep them out of the
        # CLI's output (the reason is reported in one line below).
        with tempfile.TemporaryDirectory(prefix="servedmodel-export-") as artifacts, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), torch.no_grad():
            program = torch.onnx.export(
                module, tuple(spec.example_inputs), None,
                kwargs=None,
                verbose=False,
                # Names are applied afterwards by rename_io (see there why).
                input_names=None,
                output_names=None,
                opset_version=options.opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes=tuple(dynamic_shapes),
                custom_translation_table=None,
                report=False,
                optimize=options.optimize,
                verify=False,  # verification is our own step, against stated tolerances
                profile=False,
                dump_exported_program=False,
                artifacts_dir=artifacts,
                # The remaining arguments belong to the TorchScript exporter (dynamo=False);
                # they are passed at their defaults so that nothing is implicit.
                export_params=True,
                keep_initializers_as_inputs=False,
                dynamic_axes=None,
                training=torch.onnx.TrainingMode.EVAL,
                operator_export_type=torch.onnx.OperatorExportTypes.ONNX,
                do_constant_folding=True,
                custom_opsets=None,
                export_modules_as_functions=False,
                autograd_inlining=True,
            )
            assert program is not None  # dynamo=True returns the ONNXProgram
            model = program.model_proto
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds of errors
        raise fail(f"torch.onnx.export raised {_reason(e)}") from None

    g = model.graph
    if len(g.input) != len(spec.input_names):
        raise fail(f"the exported graph has {len(g.input)} input(s), the spec names "
                   f"{len(spec.input_names)} ({list(spec.input_names)}); an input the model does not "
                   "use is dropped by the exporter")
    if len(g.output) != len(spec.output_names):
        raise fail(f"the exported graph has {len(g.output)} output(s), the spec names {len(spec.output_names)}")
    strip_metadata(model)
    rename_io(model, spec.input_names, spec.output_names)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), options.opset)

    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise fail(f"onnx.checker / shape inference: {type(e).__name__}: {' '.join(str(e).split())[:400]}") from None

    inputs, outputs = tensor_infos(model.graph.input), tensor_infos(model.graph.output)
    if spec.max_batch_size > 0:
        static = [t.name for t in (*inputs, *outputs) if not t.shape or t.shape[0] != -1]
        if static:
            raise fail(f"dim 0 of {static} is not dynamic in the exported graph, but max_batch_size > 0 "
                       "promises a batch dim there (is the model batch-major? else set max_batch_size=0)")
    if spec.labels and outputs[0].shape and outputs[0].shape[-1] not in (-1, len(spec.labels)):
        raise BuildError(spec.name, "factory", f"labels has {len(spec.labels)} names but output "
                         f"{outputs[0].name!r} has {outputs[0].shape[-1]} classes (its last dim)")
    data = model.SerializeToString(deterministic=True)
    out_path = Path(out_path)
    out_path.write_bytes(data)
    return ExportResult(path=out_path, opset=int(opset), inputs=inputs, outputs=outputs, size_bytes=len(data))
