"""The task-quality gate: a model's own metric, measured with onnxruntime on the fp32 export and
on the compressed variant, and the allowed drop between the two.

Parity (models/verify.py) proves the graph computes what the torch module computes; it cannot
tell whether an int8 or pruned model still does its job. An `Evaluation` says what the job is:
held-out inputs, their labels or targets, and a metric. The pipeline measures the metric on the
fp32 ONNX export (the `reference`) and on the variant it packages (the `value`); a variant whose
`drop` exceeds the allowance is refused (exit code 9) and nothing is written.

numpy is imported inside the functions: `import models` must stay cheap for cached rebuilds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .constants import COMPRESSIONS
from .errors import EXIT_QUALITY, EXIT_USAGE, BuildError, SpecError
from .runtime import session

# Built-in metrics, all "higher is better", all in [-1, 1]:
#   accuracy              share of rows whose argmax over the last dim equals the integer label
#   spearman              Spearman rank correlation between the cosine similarity of row pairs
#                         and the similarity scores given for them: targets = [(i, j, score), ...]
#                         with i, j row indices into the concatenated evaluation inputs
#   neighbour-agreement   share of rows whose nearest neighbour (cosine, itself excluded) among the
#                         evaluation rows with the fp32 export is among their `top_k` nearest
#                         with the variant (retrieval agreement; the reference is 1.0 by
#                         definition; no targets). top_k > 1 forgives near-ties swapping places
METRICS = ("accuracy", "spearman", "neighbour-agreement")

# Allowed drop of the metric from the fp32 export, per compression (absolute, in the metric's
# units). fp16 changes almost nothing; int8 and pruning are judged by the task they serve.
DEFAULT_MAX_DROP: Mapping[str, float] = {
    "none": 0.0, "fp16": 0.005, "int8": 0.01, "prune": 0.02, "prune-int8": 0.03,
}

UserMetric = Callable[[Any, Any], float]


@dataclass(frozen=True)
class Evaluation:
    """What a model is for, measured. Give one (or a list) as `ModelSpec.evaluation`.

      metric     "accuracy", "spearman", "neighbour-agreement", or your own function
                 `metric(outputs: np.ndarray, targets) -> float`, called with the chosen output
                 of every evaluation batch concatenated along dim 0 (with `name` then required)
      inputs     held-out batches: a list of input tuples (torch tensors, like example_inputs);
                 never used for training or calibration
      targets    labels (accuracy: one integer per row), [(i, j, score), ...] (spearman),
                 None (neighbour-agreement), or whatever your function takes
      dataset    a short name of the data, recorded in the manifest (e.g. "sklearn-digits-test")
      name       the metric's name in the manifest (default: `metric` when it is a string)
      output     which output the metric reads (default: the first)
      max_drop   {compression: allowed drop} overriding DEFAULT_MAX_DROP per key
      higher_is_better  False for an error metric (then drop = value - reference)
      top_k      neighbour-agreement only: how many of the variant's nearest rows may hold the
                 fp32 nearest neighbour (default 1: the very same neighbour)
    """

    metric: str | UserMetric
    inputs: Sequence[tuple]
    targets: Any = None
    dataset: str = "held-out"
    name: str | None = None
    output: str | None = None
    max_drop: Mapping[str, float] = field(default_factory=dict)
    higher_is_better: bool = True
    top_k: int = 1

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.metric, str):
            if self.metric not in METRICS:
                problems.append(f"metric must be one of {', '.join(METRICS)} or a function, got {self.metric!r}")
        elif not callable(self.metric):
            problems.append(f"metric must be one of {', '.join(METRICS)} or a function, "
                            f"got {type(self.metric).__name__}")
        elif not (isinstance(self.name, str) and self.name):
            problems.append("a metric function needs a name (Evaluation(name=...)) for the manifest")
        if not (isinstance(self.inputs, (list, tuple)) and self.inputs):
            problems.append("inputs must be a non-empty list of input tuples (batches)")
        else:
            import torch  # an Evaluation holds tensors: torch is imported already

            object.__setattr__(self, "inputs", tuple((b,) if isinstance(b, torch.Tensor) else b for b in self.inputs))
        if not (isinstance(self.dataset, str) and self.dataset.strip()):
            problems.append(f"dataset must be a non-empty string, got {self.dataset!r}")
        if self.metric == "accuracy" and self.targets is None:
            problems.append("metric 'accuracy' needs targets: one integer label per evaluation row")
        if self.metric == "spearman":
            pairs = self.targets
            if not (isinstance(pairs, (list, tuple)) and len(pairs) >= 3
                    and all(isinstance(p, (list, tuple)) and len(p) == 3 for p in pairs)):
                problems.append("metric 'spearman' needs targets [(i, j, score), ...] with at least 3 pairs")
        if self.metric == "neighbour-agreement" and self.targets is not None:
            problems.append("metric 'neighbour-agreement' compares with the fp32 export; give no targets")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 1):
            problems.append(f"top_k must be an integer >= 1, got {self.top_k!r}")
        elif self.top_k > 1 and self.metric != "neighbour-agreement":
            problems.append("top_k applies to metric 'neighbour-agreement' only")
        if not isinstance(self.max_drop, Mapping):
            problems.append("max_drop must be a mapping {compression: allowed drop}")
        else:
            for k, v in self.max_drop.items():
                if k not in COMPRESSIONS:
                    problems.append(f"max_drop key {k!r} is not a compression ({', '.join(COMPRESSIONS)})")
                if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                    problems.append(f"max_drop[{k!r}] must be a number >= 0, got {v!r}")
        if problems:
            raise SpecError("invalid Evaluation: " + "; ".join(problems))

    @property
    def metric_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.metric}@{self.top_k}" if self.top_k > 1 else str(self.metric)

    def allowance(self, compression: str, override: float | None = None) -> float:
        """The allowed drop for `compression`; `override` (--max-metric-drop) wins."""
        if override is not None:
            return float(override)
        return float(self.max_drop.get(compression, DEFAULT_MAX_DROP[compression]))


def check_max_drop(model: str, value: Any) -> float | None:
    """Validate a --max-metric-drop / build(max_metric_drop=...) value (exit code 2 if bad)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BuildError(model, "usage", f"max_metric_drop must be a finite number >= 0, got {value!r}", EXIT_USAGE)
    return float(value)


def _ranks(x):
    """Ranks from 1, ties sharing their average rank (as Spearman's rho needs)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _unit_rows(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def nearest_neighbours(x, k: int = 1):
    """Indices of each row's k nearest other rows by cosine similarity, nearest first."""
    import numpy as np

    u = _unit_rows(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def measure(ev: Evaluation, outputs, fp32_outputs) -> float:
    """The metric of `outputs` (the chosen output over all evaluation rows)."""
    import numpy as np

    if callable(ev.metric):
        return float(ev.metric(outputs, ev.targets))
    if ev.metric == "accuracy":
        labels = np.asarray(ev.targets).reshape(-1)
        pred = np.asarray(outputs).reshape(len(labels), -1).argmax(axis=1)
        return float((pred == labels).mean())
    if ev.metric == "spearman":
        u = _unit_rows(outputs)
        pairs = np.asarray(ev.targets, dtype=np.float64)
        i, j = pairs[:, 0].astype(int), pairs[:, 1].astype(int)
        return spearman((u[i] * u[j]).sum(axis=1), pairs[:, 2])
    if ev.metric == "neighbour-agreement":
        truth = nearest_neighbours(fp32_outputs, 1)
        return float((nearest_neighbours(outputs, ev.top_k) == truth).any(axis=1).mean())
    raise ValueError(f"unknown metric {ev.metric!r}")


def run_outputs(spec, ev: Evaluation, sess):
    """The chosen output of `sess` on every evaluation batch, concatenated."""
    import numpy as np

    name = ev.output or spec.output_names[0]
    outs = []
    for batch in ev.inputs:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(spec.input_names, batch)}
        outs.append(sess.run([name], feed)[0])
    return np.concatenate(outs, axis=0)


def _round(x: float) -> float:
    # Six significant digits: stable against last-bit noise (the manifest is hashed), and
    # small error metrics (an MSE of 1e-8) keep their value.
    return float(f"{float(x):.6g}")


@dataclass(frozen=True)
class Measured:
    """The fp32 export's outputs and metric for one Evaluation (computed once per build)."""

    evaluation: Evaluation
    fp32_outputs: Any
    reference: float
    n: int


def reference(spec, fp32_path) -> tuple[Measured, ...]:
    """Measure every evaluation of `spec` on the fp32 ONNX export."""
    sess = session(fp32_path)
    measured = []
    for ev in spec.evaluations:
        out = _checked_outputs(spec, ev, sess, "fp32")
        # n: what the metric averages over (pairs for spearman, rows otherwise)
        n = len(ev.targets) if ev.metric == "spearman" else len(out)
        measured.append(Measured(ev, out, measure(ev, out, out), int(n)))
    return tuple(measured)


def _checked_outputs(spec, ev: Evaluation, sess, what: str):
    import numpy as np

    try:
        out = run_outputs(spec, ev, sess)
    except Exception as e:  # noqa: BLE001
        raise BuildError(spec.name, "evaluate", f"onnxruntime failed on the evaluation inputs ({what}): "
                         f"{' '.join(str(e).split())[:300]}", EXIT_QUALITY) from None
    if ev.metric == "accuracy" and len(np.asarray(ev.targets).reshape(-1)) != len(out):
        raise BuildError(spec.name, "factory", f"evaluation {ev.dataset!r}: {len(np.asarray(ev.targets).reshape(-1))} "
                         f"labels for {len(out)} rows")
    return out


def gate(spec, compression: str, model_path, measured: tuple[Measured, ...],
         max_metric_drop: float | None = None) -> dict[str, Any] | None:
    """Measure the variant at `model_path`; return the manifest's `evaluation` record, or raise
    BuildError(step="evaluate", exit code 9) naming every metric whose drop is past its allowance.

    The record describes the spec's first evaluation; further ones are listed under "others"
    with the same fields. None when the spec has no evaluation."""
    if not measured:
        return None
    sess = session(model_path) if compression != "none" else None
    records, problems = [], []
    for m in measured:
        ev = m.evaluation
        if sess is None:
            value = m.reference
        else:
            out = _checked_outputs(spec, ev, sess, compression)
            value = measure(ev, out, m.fp32_outputs)
        drop = (m.reference - value) if ev.higher_is_better else (value - m.reference)
        allowed = ev.allowance(compression, max_metric_drop)
        # Rounded as recorded, so that the record and the decision agree.
        passed = _round(drop) <= allowed
        records.append({"metric": ev.metric_name, "dataset": ev.dataset, "n": m.n, "reference": _round(m.reference),
                        "value": _round(value), "drop": _round(drop), "max_drop": allowed,
                        "higher_is_better": ev.higher_is_better, "passed": passed})
        if not passed:
            source = "--max-metric-drop" if max_metric_drop is not None else (
                "the spec's max_drop" if compression in ev.max_drop else "the default")
            problems.append(f"{ev.metric_name} on {ev.dataset!r} (n={m.n}) is {value:.6g} vs {m.reference:.6g} "
                            f"for the fp32 export: a drop of {drop:.6g} exceeds the allowance {allowed:g} "
                            f"({source} for {compression})")
    if problems:
        raise BuildError(spec.name, "evaluate", f"the {compression} variant is refused: " + "; ".join(problems)
                         + " (nothing was written)", EXIT_QUALITY)
    record = dict(records[0])
    if len(records) > 1:
        record["others"] = records[1:]
    return record
