"""`ModelSpec`: what a model factory returns.

A spec is checked when it is created: every problem is collected and raised at once, each
naming the field. torch is imported lazily, so `import models` stays cheap (the CLI's usage
errors and the components' config checks must not pay for importing torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .constants import COMPRESSIONS, INT8_METHODS, TASKS
from .errors import SpecError
from .evaluate import Evaluation
from .prune import FineTune, PruneOptions
from .tolerance import DEFAULT_TOLERANCES, Tolerance


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and x != "" and x.strip() == x


@dataclass(eq=False)
class ModelSpec:
    """A model ready for export. Returned by a zoo entry or by your own factory.

    Required:
      name            the served model's name (letters, digits, '-', '_', '.')
      module          a torch.nn.Module; it is put in eval mode before export
      example_inputs  a tuple of tensors, one per input, used to trace and to verify
      input_names     one name per example input
      output_names    one name per (flattened) output of module(*example_inputs)
    Optional:
      dynamic_axes    {input name: {dim: dim name}}; default: dim 0 of every input is the
                      dynamic "batch" dim (when max_batch_size > 0). Declare other dynamic
                      dims here, e.g. {"input_ids": {0: "batch", 1: "sequence"}}.
      max_batch_size  dynamic batching cap for the server (default 32; 0 = no batch dim)
      max_queue_delay_ms  batching window (default 2.0)
      warmup_batch_sizes  batch sizes the server runs at start (default (1, 8, max_batch_size))
      labels          class names of a classifier's first output (its last dim)
      task            "classification" (top-1 agreement recorded), "embedding" (cosine
                      recorded), or "generic" (default)
      calibration_inputs  a sequence of input tuples (batches) for static int8 calibration
      verification_inputs  extra input tuples (batches) to verify on, besides example_inputs
                      (e.g. other sequence lengths); their rows also fill the batch-8 check
      int8_method     "auto" (static when calibration_inputs are given, else dynamic),
                      "dynamic" or "static"
      int8_keep_fp32  names of submodules (module.named_modules()) whose Linear layers stay fp32
                      under int8: mixed precision for the few most sensitive layers
      tolerances      {compression: Tolerance}, overriding DEFAULT_TOLERANCES per key
      evaluation      a models.Evaluation (or a list of them): held-out data and the task metric
                      the quality gate measures on the fp32 export and on every compressed
                      variant (docs/pipeline.md); None: no task metric is measured
      finetune        a models.FineTune: training data for a short fine-tune after pruning
      prune           a models.PruneOptions for --compression prune/prune-int8 (default:
                      models.prune.PRUNE, half of the channels of every prunable layer)
      input_ranges    {input name: (low, high)}: the values an input may take, inclusive
                      (token ids: (0, vocab_size - 1)); written to the manifest as the input's
                      `range`, and the server refuses a request outside it with 400 before
                      batching (one caller's bad ids never fail a batch of others)
      input_max_shapes  {input name: [size or -1 per dim]}: the largest size of each dimension
                      (-1: no maximum), e.g. [-1, 512] for a 512-position encoder; the manifest's
                      `max_shape`
      max_request_elements  the most tensor elements one request may carry, all inputs
                      together (manifest `limits.max_request_elements`): bounds the cost of one
                      request; None: bounded by the batch cap and the body size only
    """

    name: str
    module: Any
    example_inputs: tuple
    input_names: Sequence[str]
    output_names: Sequence[str]
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    warmup_batch_sizes: Sequence[int] | None = None
    labels: Sequence[str] | None = None
    task: str = "generic"
    calibration_inputs: Sequence[tuple] | None = None
    verification_inputs: Sequence[tuple] | None = None
    int8_method: str = "auto"
    int8_keep_fp32: Sequence[str] = ()
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    evaluation: Any = None
    finetune: Any = None
    prune: Any = None
    input_ranges: Mapping[str, Sequence[float]] | None = None
    input_max_shapes: Mapping[str, Sequence[int]] | None = None
    max_request_elements: int | None = None

    def __post_init__(self) -> None:
        import torch  # a spec holds a torch module; whoever builds one has imported torch

        problems: list[str] = []
        if not (isinstance(self.name, str) and self.name and len(self.name) <= 63
                and all(c.isalnum() or c in "-_." for c in self.name) and self.name[0].isalnum()):
            problems.append(f"name must be 1-63 characters of letters, digits, '-', '_', '.' "
                            f"starting with a letter or digit, got {self.name!r}")
        if not isinstance(self.module, torch.nn.Module):
            problems.append(f"module must be a torch.nn.Module, got {type(self.module).__name__}")
        if isinstance(self.example_inputs, torch.Tensor):
            self.example_inputs = (self.example_inputs,)
        if isinstance(self.example_inputs, list):
            self.example_inputs = tuple(self.example_inputs)
        if not (isinstance(self.example_inputs, tuple) and self.example_inputs
                and all(isinstance(t, torch.Tensor) for t in self.example_inputs)):
            problems.append("example_inputs must be a non-empty tuple of torch.Tensor")
        if isinstance(self.input_names, (list, tuple)):
            self.input_names = tuple(self.input_names)
        if isinstance(self.output_names, (list, tuple)):
            self.output_names = tuple(self.output_names)
        for fname in ("input_names", "output_names"):
            names = getattr(self, fname)
            if not (isinstance(names, tuple) and names and all(_is_name(n) for n in names)):
                problems.append(f"{fname} must be a non-empty list of non-empty strings, got {names!r}")
            elif len(set(names)) != len(names):
                problems.append(f"{fname} has duplicates: {list(names)}")
        if (isinstance(self.input_names, tuple) and isinstance(self.output_names, tuple)
                and set(self.input_names) & set(self.output_names)):
            problems.append(f"input_names and output_names overlap: "
                            f"{sorted(set(self.input_names) & set(self.output_names))}")
        if (isinstance(self.example_inputs, tuple) and isinstance(self.input_names, tuple)
                and len(self.example_inputs) != len(self.input_names)):
            problems.append(f"input_names has {len(self.input_names)} names but example_inputs "
                            f"has {len(self.example_inputs)} tensors")
        if not (isinstance(self.max_batch_size, int) and not isinstance(self.max_batch_size, bool)
                and self.max_batch_size >= 0):
            problems.append(f"max_batch_size must be an integer >= 0, got {self.max_batch_size!r}")
        if not (isinstance(self.max_queue_delay_ms, (int, float)) and self.max_queue_delay_ms >= 0):
            problems.append(f"max_queue_delay_ms must be a number >= 0, got {self.max_queue_delay_ms!r}")
        if self.task not in TASKS:
            problems.append(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.int8_method not in INT8_METHODS:
            problems.append(f"int8_method must be one of {', '.join(INT8_METHODS)}, got {self.int8_method!r}")
        if self.int8_method == "static" and not self.calibration_inputs:
            problems.append("int8_method 'static' needs calibration_inputs")
        if self.labels is not None:
            if not (isinstance(self.labels, (list, tuple)) and all(isinstance(x, str) for x in self.labels)
                    and self.labels):
                problems.append("labels must be a non-empty list of strings or None")
            else:
                self.labels = tuple(self.labels)
        if not isinstance(self.tolerances, Mapping):
            problems.append("tolerances must be a mapping {compression: Tolerance}")
        else:
            for k, v in self.tolerances.items():
                if k not in COMPRESSIONS:
                    problems.append(f"tolerances key {k!r} is not a compression ({', '.join(COMPRESSIONS)})")
                if not isinstance(v, Tolerance):
                    problems.append(f"tolerances[{k!r}] must be a models.Tolerance")
        if isinstance(self.int8_keep_fp32, str) or not isinstance(self.int8_keep_fp32, (list, tuple)):
            problems.append("int8_keep_fp32 must be a list of submodule names")
        else:
            self.int8_keep_fp32 = tuple(self.int8_keep_fp32)
            if isinstance(self.module, torch.nn.Module):
                known = dict(self.module.named_modules())
                unknown = [n for n in self.int8_keep_fp32 if n not in known]
                if unknown:
                    problems.append(f"int8_keep_fp32 names {unknown}, not submodules of the module")
        self._check_dynamic_axes(problems)
        self._check_batching(problems)
        self._check_calibration(problems, torch)
        self._check_quality(problems, torch)
        self._check_request_bounds(problems, torch)
        if problems:
            raise SpecError(f"invalid ModelSpec {self.name!r}: " + "; ".join(problems))

    def _inputs_ok(self) -> bool:
        import torch

        return (isinstance(self.example_inputs, tuple) and isinstance(self.input_names, tuple)
                and len(self.example_inputs) == len(self.input_names)
                and all(isinstance(t, torch.Tensor) for t in self.example_inputs))

    def _check_dynamic_axes(self, problems: list[str]) -> None:
        if not isinstance(self.input_names, tuple):
            return
        if self.dynamic_axes is None:
            self.dynamic_axes = ({n: {0: "batch"} for n in self.input_names}
                                 if isinstance(self.max_batch_size, int) and self.max_batch_size > 0 else {})
        if not isinstance(self.dynamic_axes, Mapping):
            problems.append("dynamic_axes must be a mapping {input name: {dim: name}}")
            return
        axes: dict[str, dict[int, str]] = {}
        for k, dims in self.dynamic_axes.items():
            if k not in self.input_names:
                problems.append(f"dynamic_axes names {k!r}, which is not an input "
                                "(output shapes follow from the inputs')")
                continue
            if not isinstance(dims, Mapping) or not all(
                    isinstance(d, int) and _is_name(n) for d, n in dims.items()):
                problems.append(f"dynamic_axes[{k!r}] must map dim indices to names")
                continue
            rank = None
            if self._inputs_ok():
                rank = self.example_inputs[self.input_names.index(k)].dim()
            for d in dims:
                if rank is not None and not 0 <= d < rank:
                    problems.append(f"dynamic_axes[{k!r}] has dim {d}, but that input has rank {rank}")
            axes[k] = {int(d): str(n) for d, n in sorted(dims.items())}
        self.dynamic_axes = axes

    def _check_batching(self, problems: list[str]) -> None:
        if not (isinstance(self.max_batch_size, int) and self._inputs_ok()
                and isinstance(self.dynamic_axes, dict)):
            return
        if self.max_batch_size > 0:
            for n, t in zip(self.input_names, self.example_inputs):
                if t.dim() == 0 or 0 not in self.dynamic_axes.get(n, {}):
                    problems.append(f"max_batch_size > 0 needs dim 0 of input {n!r} to be a dynamic "
                                    "batch dim (declare it in dynamic_axes, or set max_batch_size=0)")
                elif t.shape[0] < 2:
                    # torch.export specialises dimensions of size 0 and 1 to constants.
                    problems.append(f"example_inputs[{n!r}] has batch size {t.shape[0]}; use at least 2 "
                                    "so the exporter keeps the batch dim dynamic")
            batch_names = {self.dynamic_axes.get(n, {}).get(0) for n in self.input_names}
            if len(batch_names) > 1:
                problems.append(f"dim 0 of every input must share one name, got {sorted(map(str, batch_names))}")
        if self.warmup_batch_sizes is None:
            cap = self.max_batch_size
            self.warmup_batch_sizes = tuple(sorted({b for b in (1, 8, cap) if 0 < b <= cap})) if cap else (1,)
        elif not (isinstance(self.warmup_batch_sizes, (list, tuple)) and all(
                isinstance(b, int) and b >= 1 and (self.max_batch_size == 0 or b <= self.max_batch_size)
                for b in self.warmup_batch_sizes)):
            problems.append("warmup_batch_sizes must be integers in [1, max_batch_size]")
        else:
            self.warmup_batch_sizes = tuple(self.warmup_batch_sizes)

    def _check_calibration(self, problems: list[str], torch: Any) -> None:
        for fname in ("calibration_inputs", "verification_inputs"):
            checked = self._check_batches(fname, problems, torch)
            if checked is not None:
                setattr(self, fname, checked)

    def _check_batches(self, fname: str, problems: list[str], torch: Any) -> tuple | None:
        batches_in = getattr(self, fname)
        if batches_in is None:
            return None
        if not isinstance(batches_in, (list, tuple)) or not batches_in:
            problems.append(f"{fname} must be a non-empty list of input tuples or None")
            return None
        if not self._inputs_ok():
            return None
        batches = []
        for i, batch in enumerate(batches_in):
            if isinstance(batch, torch.Tensor):
                batch = (batch,)
            if not (isinstance(batch, (list, tuple)) and len(batch) == len(self.example_inputs)
                    and all(isinstance(t, torch.Tensor) for t in batch)):
                problems.append(f"{fname}[{i}] must be a tuple of {len(self.example_inputs)} tensors")
                continue
            for t, e in zip(batch, self.example_inputs):
                if t.dtype != e.dtype or t.dim() != e.dim():
                    problems.append(f"{fname}[{i}] must match example_inputs' dtypes and ranks")
                    break
            batches.append(tuple(batch))
        return tuple(batches)

    def _check_quality(self, problems: list[str], torch: Any) -> None:
        evs = self.evaluation
        if evs is None:
            evs = ()
        elif isinstance(evs, Evaluation):
            evs = (evs,)
        if not (isinstance(evs, (list, tuple)) and all(isinstance(e, Evaluation) for e in evs)):
            problems.append("evaluation must be a models.Evaluation, a list of them, or None")
        else:
            self.evaluation = tuple(evs) or None
            for k, ev in enumerate(evs):
                where = f"evaluation[{k}]" if len(evs) > 1 else "evaluation"
                names = self.output_names
                if ev.output is not None and isinstance(names, tuple) and ev.output not in names:
                    problems.append(f"{where}.output {ev.output!r} is not one of output_names {list(names)}")
                if self._inputs_ok():
                    for i, given in enumerate(ev.inputs):
                        batch: Any = (given,) if isinstance(given, torch.Tensor) else given  # the user's, any shape
                        if not (isinstance(batch, (list, tuple)) and len(batch) == len(self.example_inputs)
                                and all(isinstance(t, torch.Tensor) and t.dtype == e.dtype and t.dim() == e.dim()
                                        for t, e in zip(batch, self.example_inputs))):
                            problems.append(f"{where}.inputs[{i}] must be a tuple of {len(self.example_inputs)} "
                                            "tensors matching example_inputs' dtypes and ranks")
                            break
        if self.finetune is not None and not isinstance(self.finetune, FineTune):
            problems.append("finetune must be a models.FineTune or None")
        if self.prune is not None and not isinstance(self.prune, PruneOptions):
            problems.append("prune must be a models.PruneOptions or None")
        elif isinstance(self.prune, PruneOptions) and isinstance(self.module, torch.nn.Module):
            known = dict(self.module.named_modules())
            unknown = [n for n in self.prune.keep if n not in known]
            if unknown:
                problems.append(f"prune.keep names {unknown}, not submodules of the module")

    def _check_request_bounds(self, problems: list[str], torch: Any) -> None:
        """input_ranges, input_max_shapes, max_request_elements: well-formed, naming inputs,
        and admitting the spec's own example and verification inputs (a bound that refuses
        them would refuse the requests the model was verified on)."""
        names = self.input_names if isinstance(self.input_names, tuple) else ()
        inputs_ok = self._inputs_ok()
        examples = dict(zip(names, self.example_inputs)) if inputs_ok else {}
        batches = [self.example_inputs] if inputs_ok else []
        batches += list(self.verification_inputs or ()) if isinstance(self.verification_inputs, tuple) else []
        columns = {n: [b[i] for b in batches] for i, n in enumerate(names)} if inputs_ok else {}

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.input_ranges is not None:
            if not isinstance(self.input_ranges, Mapping):
                problems.append("input_ranges must be a mapping {input name: (low, high)} or None")
            else:
                ranges: dict[str, tuple] = {}
                for k, r in self.input_ranges.items():
                    if k not in names:
                        problems.append(f"input_ranges names {k!r}, which is not an input ({list(names)})")
                        continue
                    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(number(v) for v in r)
                            and r[0] <= r[1]):
                        problems.append(f"input_ranges[{k!r}] must be (low, high), two finite numbers "
                                        f"with low <= high, got {r!r}")
                        continue
                    t = examples.get(k)
                    if t is not None and not (t.dtype.is_floating_point or t.dtype.is_complex) and not all(
                            float(v).is_integer() for v in r):
                        problems.append(f"input_ranges[{k!r}] must be integers for the integer input {k!r}, "
                                        f"got {r!r}")
                        continue
                    low, high = r
                    if t is not None and not (t.dtype.is_floating_point or t.dtype.is_complex):
                        low, high = int(low), int(high)  # written as JSON integers
                    for j, c in enumerate(columns.get(k, ())):
                        if c.numel() and (c.min().item() < low or c.max().item() > high):
                            where = "example_inputs" if j == 0 else f"verification_inputs[{j - 1}]"
                            problems.append(f"input_ranges[{k!r}] is [{low}, {high}], but {where} holds "
                                            f"values in [{c.min().item()}, {c.max().item()}]")
                            break
                    ranges[k] = (low, high)
                self.input_ranges = ranges
        if self.input_max_shapes is not None:
            if not isinstance(self.input_max_shapes, Mapping):
                problems.append("input_max_shapes must be a mapping {input name: [size or -1 per dim]} or None")
            else:
                shapes: dict[str, tuple[int, ...]] = {}
                for k, ms in self.input_max_shapes.items():
                    if k not in names:
                        problems.append(f"input_max_shapes names {k!r}, which is not an input ({list(names)})")
                        continue
                    t = examples.get(k)
                    if not (isinstance(ms, (list, tuple)) and all(
                            isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 1) for d in ms)
                            and (t is None or len(ms) == t.dim())):
                        rank = f" of the input's rank {t.dim()}" if t is not None else ""
                        problems.append(f"input_max_shapes[{k!r}] must be a list of integers >= 1 (or -1: no "
                                        f"maximum){rank}, got {ms!r}")
                        continue
                    for j, c in enumerate(columns.get(k, ())):
                        over = [d for d, (n, most) in enumerate(zip(c.shape, ms)) if most > 0 and n > most]
                        if over:
                            where = "example_inputs" if j == 0 else f"verification_inputs[{j - 1}]"
                            problems.append(f"input_max_shapes[{k!r}] is {list(ms)}, but {where} has shape "
                                            f"{list(c.shape)}")
                            break
                    shapes[k] = tuple(ms)
                self.input_max_shapes = shapes
        if self.max_request_elements is not None:
            if not (isinstance(self.max_request_elements, int) and not isinstance(self.max_request_elements, bool)
                    and self.max_request_elements >= 1):
                problems.append(f"max_request_elements must be an integer >= 1 or None, "
                                f"got {self.max_request_elements!r}")
            elif inputs_ok:
                # One row of the example must fit, or no request would.
                batched = isinstance(self.max_batch_size, int) and self.max_batch_size > 0
                row = sum(t.numel() // max(t.shape[0], 1) if batched and t.dim() else t.numel()
                          for t in self.example_inputs)
                if row > self.max_request_elements:
                    problems.append(f"max_request_elements {self.max_request_elements} is below one example "
                                    f"row's {row} elements (all inputs together)")

    @property
    def evaluations(self) -> tuple:
        """The spec's evaluations (empty when it has none)."""
        return tuple(self.evaluation or ())

    def tolerance(self, compression: str) -> Tolerance:
        """The tolerance this model is held to after `compression`."""
        return self.tolerances.get(compression, DEFAULT_TOLERANCES[compression])

    def resolved_int8_method(self) -> str:
        if self.int8_method != "auto":
            return self.int8_method
        return "static" if self.calibration_inputs else "dynamic"
