"""The onnxruntime session every measurement of the pipeline runs on (parity, the task metric)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def session(path: Path | str, threads: int = 1) -> Any:
    """A CPU onnxruntime session. One intra-op thread: reductions are then computed in one
    order, so the recorded errors and metrics (part of the manifest, hence of the version) are
    reproducible."""
    # Imported here: onnxruntime is heavy, and `import models` must stay cheap (the CLI's usage
    # errors, the components' config checks).
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # failures are reported by us, in one line
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
