"""`Tolerance`: how close a compiled model must be to the fp32 eager torch model, and the named
presets per compression (docs/pipeline.md, "Compression presets and tolerances")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import SpecError


@dataclass(frozen=True)
class Tolerance:
    """How close a compiled model must be to the fp32 eager torch model.

    An output passes when every element satisfies |onnx - torch| <= atol + rtol * |torch|
    (skipped when `atol` is None: int8 errors are judged by what the model is for), its
    top-1 agreement is at least `min_top1_agreement` (classification, first output) and its
    smallest per-row cosine similarity is at least `min_cosine` (float outputs).
    Integer and boolean outputs must always match exactly.
    """

    atol: float | None
    rtol: float
    min_top1_agreement: float | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.atol is not None and not (isinstance(self.atol, (int, float)) and self.atol >= 0):
            problems.append(f"atol must be a number >= 0 or None, got {self.atol!r}")
        if not (isinstance(self.rtol, (int, float)) and self.rtol >= 0):
            problems.append(f"rtol must be a number >= 0, got {self.rtol!r}")
        for name in ("min_top1_agreement", "min_cosine"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and -1.0 <= v <= 1.0):
                problems.append(f"{name} must be a number in [-1, 1] or None, got {v!r}")
        if problems:
            raise SpecError("invalid Tolerance: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol,
                "min_top1_agreement": self.min_top1_agreement, "min_cosine": self.min_cosine}


# Named presets. fp32 is tight: the exporter and onnxruntime differ only by kernel rounding.
# fp16 keeps ~3 significant digits. int8 is judged by what the model is for (top-1 agreement,
# cosine), since elementwise errors of a quantized model scale with its activations.
FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, min_top1_agreement=None, min_cosine=None)
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2, min_top1_agreement=0.95, min_cosine=0.999)
INT8_TOLERANCE = Tolerance(atol=None, rtol=0.0, min_top1_agreement=0.9, min_cosine=0.98)
# Pruning changes outputs by design: parity is measured and reported against these thresholds
# but never required; the task metric (models/evaluate.py) judges a pruned model.
PRUNE_TOLERANCE = Tolerance(atol=None, rtol=0.0, min_top1_agreement=0.9, min_cosine=0.98)
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "none": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE,
    "prune": PRUNE_TOLERANCE, "prune-int8": PRUNE_TOLERANCE,
}
