"""ServedModel's offline world: the model zoo and the preparation pipeline.

    from servedmodel.models import ModelSpec, BuildResult, BuildError, build

`build()` exports a ModelSpec to ONNX, verifies it against eager torch, optionally compresses
it (fp16, int8) and verifies again, then writes a content-addressed Docker build context
(docs/architecture.md). torch, onnx and onnxruntime are imported only when a build needs them,
so a cached rebuild stays fast. This package never imports pulumi or serving/.
"""
from .constants import COMPRESSIONS
from .errors import BuildError, SpecError
from .evaluate import DEFAULT_MAX_DROP, METRICS, Evaluation
from .pipeline import BuildResult, build
from .prune import PRUNE, FineTune, PruneOptions
from .seal import ENCRYPTIONS, Encryption
from .spec import ModelSpec
from .tolerance import DEFAULT_TOLERANCES, FP16_TOLERANCE, FP32_TOLERANCE, INT8_TOLERANCE, Tolerance
from .zoo import ZOO

__all__ = ["BuildError", "BuildResult", "build", "ModelSpec", "SpecError", "Tolerance", "DEFAULT_TOLERANCES",
           "FP32_TOLERANCE", "FP16_TOLERANCE", "INT8_TOLERANCE", "ZOO", "COMPRESSIONS", "Evaluation", "METRICS",
           "DEFAULT_MAX_DROP", "FineTune", "PruneOptions", "PRUNE", "Encryption", "ENCRYPTIONS"]
