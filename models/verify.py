"""Steps 2 and 4, verify: onnxruntime (CPU) against the eager fp32 torch module.

The same batches and the same torch reference serve the fp32 check and the check after
compression. Every output is measured; every failing output is reported at once (a parity
failure is an error, never a warning), and the record goes into the manifest.

torch is imported inside the functions that run the module: `import models` must not load it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BuildError
from .export import flatten_outputs
from .runtime import session
from .tolerance import FP32_TOLERANCE


def batch_sizes_to_verify(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes verified for a model the server batches: 1, 2, every power of two below
    `max_batch_size`, and `max_batch_size` itself. The server forms any size up to the max, so
    both ends and the sizes between are checked (a model that branches on `x.shape[0] > 16` is
    caught at the max); doubling keeps the count logarithmic, so the build stays fast."""
    if max_batch_size <= 0:
        return ()
    sizes, p = {1, max_batch_size}, 2
    while p < max_batch_size:
        sizes.add(p)
        p *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class VerifyBatch:
    label: str
    inputs: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Reference:
    """The batches to verify on and the eager fp32 torch outputs for each."""

    batches: tuple[VerifyBatch, ...]
    outputs: tuple[tuple[np.ndarray, ...], ...]

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({int(b.inputs[0].shape[0]) for b in self.batches if b.inputs[0].ndim})


def verification_batches(spec) -> tuple[VerifyBatch, ...]:
    """example_inputs; with a batch dim also one batch per size of batch_sizes_to_verify (rows
    taken in turn from every batch the spec gives whose non-batch shapes match, so each batch
    is the start of the largest); then each of spec.verification_inputs."""
    as_np = lambda batch: tuple(t.detach().cpu().numpy() for t in batch)  # noqa: E731
    example = as_np(spec.example_inputs)
    batches = [VerifyBatch("example", example)]
    extra = [as_np(b) for b in (spec.verification_inputs or ())]
    if spec.max_batch_size > 0:
        pool = [b for b in [example, *extra, *(as_np(b) for b in (spec.calibration_inputs or ()))]
                if all(x.shape[1:] == e.shape[1:] for x, e in zip(b, example))]
        rows = [tuple(a[i:i + 1] for a in b) for b in pool for i in range(b[0].shape[0])]
        for n in batch_sizes_to_verify(spec.max_batch_size):
            picked = [rows[i % len(rows)] for i in range(n)]
            batches.append(VerifyBatch(f"batch-{n}", tuple(np.concatenate(c) for c in zip(*picked))))
    batches.extend(VerifyBatch(f"verification-{i}", b) for i, b in enumerate(extra))
    return tuple(batches)


def reference(spec) -> Reference:
    """Run the eager fp32 module on every verification batch."""
    import torch

    batches = verification_batches(spec)
    outs = []
    module = spec.module.eval()
    with torch.no_grad():
        for b in batches:
            try:
                out = flatten_outputs(module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in b.inputs)))
            except Exception as e:  # noqa: BLE001
                raise BuildError(spec.name, "verify", f"the torch module raised on the {b.label} batch: "
                                 f"{type(e).__name__}: {e}") from None
            outs.append(tuple(o.detach().cpu().numpy() for o in out))
    return Reference(batches=batches, outputs=tuple(outs))


# Rows of the largest verified batch that are also run alone by check_rows_independent: spread
# from the first to the last, so that couplings running either way (cumulative sums) show.
ROW_PROBES = 4


def _nonfinite_disagree(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Where one side is not finite and the other is not the same value: inf where torch has a
    finite value or the other infinity, NaN where torch has no NaN. Legitimate infinities
    (both sides, same sign) agree."""
    fin_g, fin_w = np.isfinite(got), np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    return ~(fin_g & fin_w) & ~same


def _rows_differ(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> float | None:
    """None when `got` matches `want` (floats within atol + rtol*|want|, equal non-finite
    values; other dtypes exactly); else the largest absolute difference (inf for a non-finite
    mismatch)."""
    if got.shape != want.shape:
        return float("inf")
    if not np.issubdtype(want.dtype, np.floating):
        return None if np.array_equal(got, want) else float(np.abs(got.astype(np.float64) - want).max())
    g, w = got.astype(np.float64), want.astype(np.float64)
    if _nonfinite_disagree(g, w).any():
        return float("inf")
    both = np.isfinite(g) & np.isfinite(w)
    diff = np.abs(np.where(both, g - w, 0.0))
    return None if np.all(diff <= atol + rtol * np.abs(np.where(both, w, 0.0))) else float(diff.max())


def check_rows_independent(spec, ref: Reference) -> None:
    """Refuse a batch-coupled model: one whose rows depend on the rest of the batch (`y -
    y.mean(0)`, a cumulative sum over dim 0, a branch on the batch size). The server runs
    requests from different clients as one batch, so such a model would make one client's
    answer depend on another's data. Measured on eager torch, the model itself: rows of the
    largest verified batch are run alone, and the batch is run in reverse order; both must
    give the same rows within the fp32 tolerance. Raises BuildError (verify, exit code 5)."""
    import torch

    sized = [(b, o) for b, o in zip(ref.batches, ref.outputs) if b.label.startswith("batch-")]
    if spec.max_batch_size < 2 or not sized:
        return
    batch, expected = max(sized, key=lambda bo: bo[0].inputs[0].shape[0])
    n = int(batch.inputs[0].shape[0])
    if n < 2:
        return
    tol = spec.tolerance("none")
    if tol.atol is None:
        tol = FP32_TOLERANCE
    atol, rtol = tol.atol, tol.rtol
    assert atol is not None  # FP32_TOLERANCE has one
    module = spec.module.eval()

    def run(inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = flatten_outputs(module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)))
        return [o.detach().cpu().numpy() for o in out]

    def refuse(name: str, how: str, diff: float) -> BuildError:
        return BuildError(spec.name, "verify", (
            f"batch-coupled model: output {name!r} of {how} (max abs diff {diff:.3g}): its rows depend on "
            "the rest of the batch. The server batches requests from different clients into one run, so "
            "one client's answer would depend on another's data; batching is refused for this model. "
            "Make rows independent (no reductions, normalisation or branches across dim 0; BatchNorm and "
            "Dropout in eval mode), or set max_batch_size=0 (no batch dimension: batching off)"))

    for i in sorted({round(x) for x in np.linspace(0, n - 1, min(n, ROW_PROBES))}):
        alone = run(tuple(a[i:i + 1] for a in batch.inputs))
        for name, got, want in zip(spec.output_names, alone, expected):
            diff = _rows_differ(got, want[i:i + 1], atol, rtol)
            if diff is not None:
                raise refuse(name, f"row {i} computed alone differs from the same row inside the {batch.label} "
                             "batch", diff)
    order = np.arange(n)[::-1]
    reversed_out = run(tuple(a[order] for a in batch.inputs))
    for name, got, want in zip(spec.output_names, reversed_out, expected):
        diff = _rows_differ(got, want[order], atol, rtol)
        if diff is not None:
            raise refuse(name, f"the {batch.label} batch run in reverse order differs from its rows reversed", diff)


def _sig(x: float) -> float:
    """Three significant digits: enough to read, and stable against last-bit noise."""
    return float(f"{float(x):.3g}")


def _row_cosines(a: np.ndarray, b: np.ndarray, batched: bool) -> np.ndarray:
    a = a.astype(np.float64).reshape(a.shape[0] if batched and a.ndim else 1, -1)
    b = b.astype(np.float64).reshape(a.shape[0], -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def verify(spec, model_path: Path, ref: Reference, compression: str, *, required: bool = True) -> dict[str, Any]:
    """Compare the ONNX model at `model_path` with the torch reference. Returns the manifest's
    `parity` record; raises BuildError (exit code 5) listing every failing output.

    With required=False (pruned variants, which change outputs by design) nothing is raised for
    a tolerance miss: the record says `passed: false`, lists the `problems` and `required: false`."""
    step = "verify" if compression == "none" else "verify-compressed"
    tol = spec.tolerance(compression)
    try:
        sess = session(model_path)
    except Exception as e:  # noqa: BLE001
        raise BuildError(spec.name, step,
                         f"onnxruntime cannot load the model: {' '.join(str(e).split())[:300]}") from None
    names = list(spec.output_names)
    stats = {n: {"max_abs_err": 0.0, "max_rel_err": 0.0, "allclose": True, "agree": 0, "rows": 0,
                 "cos_min": 1.0, "exact": True, "float": True} for n in names}
    problems: list[str] = []
    for batch, expected in zip(ref.batches, ref.outputs):
        feed = dict(zip(spec.input_names, batch.inputs))
        try:
            got = sess.run(names, feed)
        except Exception as e:  # noqa: BLE001
            raise BuildError(spec.name, step, f"onnxruntime failed on the {batch.label} batch "
                             f"(shapes {[list(a.shape) for a in batch.inputs]}): "
                             f"{' '.join(str(e).split())[:300]}") from None
        for name, g, e in zip(names, got, expected):
            s = stats[name]
            if g.shape != e.shape:
                problems.append(f"{name}: shape {list(g.shape)} != torch {list(e.shape)} on the {batch.label} batch")
                s["allclose"] = False
                continue
            if not np.issubdtype(e.dtype, np.floating):
                s["float"] = False
                s["exact"] = s["exact"] and bool(np.array_equal(g, e))
                diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
                s["max_abs_err"] = max(s["max_abs_err"], float(diff.max(initial=0.0)))
                continue
            g64, e64 = g.astype(np.float64), e.astype(np.float64)
            # Infinities (and NaNs) are legitimate outputs when torch has the same ones at the same
            # places; anywhere else they fail. Errors and cosines are measured on the finite rest.
            wrong = _nonfinite_disagree(g64, e64)
            if wrong.any():
                at = tuple(int(i) for i in np.argwhere(wrong)[0])
                problems.append(f"{name}: {int(wrong.sum())} non-finite value(s) where torch differs on the "
                                f"{batch.label} batch (first at {list(at)}: onnxruntime {g64[at]}, torch {e64[at]})")
            finite = np.isfinite(g64) & np.isfinite(e64)
            g64, e64 = np.where(finite, g64, 0.0), np.where(finite, e64, 0.0)
            diff = np.abs(g64 - e64)
            scale = float(np.abs(e64).max(initial=0.0))
            s["max_abs_err"] = max(s["max_abs_err"], float(diff.max(initial=0.0)))
            s["max_rel_err"] = max(s["max_rel_err"], float(diff.max(initial=0.0)) / max(scale, 1e-12))
            if tol.atol is not None and not np.all(diff <= tol.atol + tol.rtol * np.abs(e64)):
                if s["allclose"]:
                    s["first_failing"] = batch.label
                s["allclose"] = False
            batched = spec.max_batch_size > 0
            s["cos_min"] = min(s["cos_min"], float(_row_cosines(g64, e64, batched).min(initial=1.0)))
            if spec.task == "classification" and name == names[0] and e.ndim >= 1:
                top1 = g.reshape(-1, e.shape[-1]).argmax(-1) == e.reshape(-1, e.shape[-1]).argmax(-1)
                s["agree"] += int(top1.sum())
                s["rows"] += int(np.prod(e.shape[:-1]))

    record: dict[str, Any] = {}
    for name in names:
        s = stats[name]
        entry: dict[str, Any] = {"max_abs_err": _sig(s["max_abs_err"]), "max_rel_err": _sig(s["max_rel_err"]),
                                 "atol": tol.atol, "rtol": tol.rtol, "top1_agreement": None, "cosine_min": None}
        if not s["float"]:
            if not s["exact"]:
                problems.append(f"{name}: integer/bool output differs from torch")
            record[name] = entry
            continue
        if tol.atol is not None and not s["allclose"]:
            where = f" (first on the {s['first_failing']} batch)" if "first_failing" in s else ""
            problems.append(f"{name}: max abs err {s['max_abs_err']:.3g} > atol {tol.atol:g} + rtol {tol.rtol:g}*|ref|"
                            + where)
        entry["cosine_min"] = round(s["cos_min"], 6)
        if tol.min_cosine is not None and s["cos_min"] < tol.min_cosine:
            problems.append(f"{name}: min cosine {s['cos_min']:.5f} < {tol.min_cosine}")
        if s["rows"]:
            agree = s["agree"] / s["rows"]
            entry["top1_agreement"] = round(agree, 6)
            if tol.min_top1_agreement is not None and agree < tol.min_top1_agreement:
                problems.append(f"{name}: top-1 agreement {agree:.3f} < {tol.min_top1_agreement}")
        entry["min_top1_agreement"] = tol.min_top1_agreement if s["rows"] else None
        entry["min_cosine"] = tol.min_cosine
        record[name] = entry
    if problems and not required:
        return {"reference": "torch-fp32-eager", "batch_sizes": ref.batch_sizes, "passed": False,
                "required": False, "problems": problems, "outputs": record}
    if not required:
        return {"reference": "torch-fp32-eager", "batch_sizes": ref.batch_sizes, "passed": True,
                "required": False, "outputs": record}
    if problems:
        what = "fp32 ONNX" if compression == "none" else f"{compression} ONNX"
        raise BuildError(spec.name, step, f"{what} does not match torch fp32 within tolerance: " + "; ".join(problems))
    return {"reference": "torch-fp32-eager", "batch_sizes": ref.batch_sizes, "passed": True, "outputs": record}
