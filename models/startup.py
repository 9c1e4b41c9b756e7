"""Step 6, startup: how long the packaged model takes to load and warm up, measured.

The server's start -> ready is mostly two things it does before answering ready: create the
onnxruntime session (load) and run the model once per warm-up batch shape (warm-up). This step
does both, the same way, on the build machine with onnxruntime's CPU provider, and returns
`{"load_seconds", "warmup_seconds", "peak_memory_bytes", ...}`. The cold-start budget
(components/coldstart.py) reads it as the measured part of a pod's start; `peak_memory_bytes` is
the model's measured memory peak, from which a GPU memory cap can be derived (docs/protocol.md,
SERVEDMODEL_GPU_MEM_LIMIT).

Why the figures are NOT in model/manifest.json: a timing differs run to run, and the manifest is
part of the content-addressed context (same inputs -> byte-identical context -> same version ->
same image digest). A timing inside it would turn every rebuild into a new image and a rollout.
So the measurement lives beside the context: in the build cache's record (a cached build reports
the figures measured when the context was made) and in BuildResult.startup / `--json`.

onnx and onnxruntime are imported inside the functions: a cache hit that already has its
figures never needs them, and `import models` must not load them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .export import V2_DATATYPES

# Rows of every dynamic non-batch dimension during warm-up (serving/model.py does the same).
WARMUP_DIM = 1


def _numpy_dtypes() -> dict[str, Any]:
    """V2 datatype name -> numpy dtype, from the one V2 table (models/export.py) and onnx's own
    element-type -> numpy mapping."""
    import onnx.helper

    out = {}
    for elem_type, name in V2_DATATYPES.items():
        try:
            out[name] = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        except (KeyError, ValueError, TypeError):
            continue
    return out


def warmup_feeds(manifest: dict[str, Any], batch: int) -> dict[str, Any]:
    """Inputs for one warm-up run: `batch` rows (when the model batches), other dynamic dims 1."""
    import numpy as np

    dtypes = _numpy_dtypes()
    batching = manifest.get("batching") or {}
    feeds = {}
    for t in manifest["inputs"]:
        shape = [d if d >= 0 else WARMUP_DIM for d in t["shape"]]
        if batching.get("max_batch_size", 0) > 0 and shape:
            shape[0] = batch
        if t["datatype"] == "BYTES":
            feeds[t["name"]] = np.full(shape, "a", dtype=object)
        else:
            feeds[t["name"]] = np.ones(shape, dtype=dtypes[t["datatype"]])
    return feeds


def warmup_batch_sizes(manifest: dict[str, Any]) -> list[int]:
    """The shapes the server warms up with: 1, the manifest's warm-up sizes and its max batch."""
    batching = manifest.get("batching") or {}
    mbs = int(batching.get("max_batch_size", 0))
    sizes = {1} | {int(b) for b in batching.get("warmup_batch_sizes", []) if b <= max(mbs, 1)}
    if mbs > 0:
        sizes.add(mbs)
    return sorted(sizes)


#: Run by `peak_memory` in a process of its own: only numpy and onnxruntime are imported, the
#: inputs are made, the high-water mark of resident memory is reset to the current size
#: (writing 5 to /proc/self/clear_refs), then the session is created and run once per warm-up
#: feed. Prints the resident size before the session and the high-water mark after.
_PEAK_MEMORY_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status")

args = json.loads(sys.argv[1])
runs = [{name: np.full(shape, "a", dtype=object) if dtype == "object" else np.ones(shape, dtype=dtype)
         for name, shape, dtype in feeds} for feeds in args["feeds"]]
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass   # the mark then includes the imports' own peak: a slight overestimate
before = status("VmRSS")
session = ort.InferenceSession(args["model"], providers=["CPUExecutionProvider"])
for feeds in runs:
    session.run(None, feeds)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def peak_memory(model_path: Path, manifest: dict[str, Any]) -> int:
    """Bytes of resident memory that loading `model_path` and running its warm-up batches add
    at their peak (onnxruntime, CPU provider): weights, the graph, the activation arena.

    Measured in a fresh process, because this one holds torch and whatever heap it freed (which
    onnxruntime would reuse unseen). Linux only (/proc). On a GPU, the CUDA provider's arena
    holds the same weights and activations; the CUDA context comes on top of it."""
    runs = [[(name, list(a.shape), "object" if a.dtype == object else a.dtype.str)
             for name, a in warmup_feeds(manifest, batch).items()]
            for batch in warmup_batch_sizes(manifest)]
    proc = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_CHILD,
                           json.dumps({"model": str(model_path), "feeds": runs})],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring the memory peak failed: {proc.stderr.strip()[-500:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0, figures["peak"] - figures["before"])


def measure(model_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Load `model_path` with onnxruntime (CPU) and warm it up once per batch shape; seconds each,
    and the memory peak of doing so (`peak_memory`).

    Raises whatever onnxruntime raises for a model it cannot run (the pipeline's step wrapper turns
    that into a BuildError naming this step)."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    for batch in warmup_batch_sizes(manifest):
        session.run(None, warmup_feeds(manifest, batch))
    warmup = time.perf_counter() - t1
    return {"load_seconds": round(load, 3), "warmup_seconds": round(warmup, 3),
            "peak_memory_bytes": peak_memory(model_path, manifest),
            "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__,
            "batch_sizes": warmup_batch_sizes(manifest)}


class _Counter:
    """A write-only file object that only counts what is written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def model_layer_bytes(context_dir: Path) -> int:
    """Compressed bytes of the image's model layer (`COPY model/` -> one gzip'd tar layer):
    the context's model/ folder tarred and gzip'd at level 6, the level the image builder's
    default gzip compression uses. What a node pulls for the model, computed from the real file."""
    import gzip
    import tarfile

    counter = _Counter()
    with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as gz:  # type: ignore[arg-type]
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(Path(context_dir) / "model"), arcname="app/model")
    return counter.n
