"""Reading and checking `model/manifest.json` (docs/architecture.md, section 2)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .codec import V2_TO_NUMPY
from .errors import StartupError
from .routes import valid_model_name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    #: optional, inputs: the values the model accepts, [low, high] inclusive (token ids:
    #: [0, vocabulary size - 1]); a request outside is refused before batching
    range: tuple[float, float] | None = None
    #: optional, inputs: the largest size of each dimension (-1: no maximum beyond the batch
    #: limit and the body size), e.g. [-1, 512] for a 512-token model
    max_shape: tuple[int, ...] | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    platform: str
    device: str
    model_file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    max_queue_delay_ms: float
    warmup_batch_sizes: tuple[int, ...]
    raw: dict
    #: optional: the most tensor elements one request may carry, all inputs together
    #: (manifest `limits.max_request_elements`); None: bounded by the body size only
    max_request_elements: int | None = None

    @property
    def signature(self) -> dict:
        return {"inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs]}


def _tensors(doc: dict, key: str, problems: list[str]) -> tuple[TensorSpec, ...]:
    items = doc.get(key)
    if not isinstance(items, list) or not items:
        problems.append(f"'{key}' must be a non-empty list")
        return ()
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, dict):
            problems.append(f"{key}[{i}] must be an object")
            continue
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not name:
            problems.append(f"{key}[{i}].name must be a non-empty string")
        if datatype not in V2_TO_NUMPY:
            problems.append(f"{key}[{i}].datatype {datatype!r} is not a V2 datatype "
                            f"({', '.join(V2_TO_NUMPY)})")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            problems.append(f"{key}[{i}].shape must be a list of integers >= -1")
            shape = []
        value_range = t.get("range")
        if value_range is not None and not (
                isinstance(value_range, list) and len(value_range) == 2
                and all(_number(v) for v in value_range) and value_range[0] <= value_range[1]):
            problems.append(f"{key}[{i}].range must be [low, high], two finite numbers")
            value_range = None
        max_shape = t.get("max_shape")
        if max_shape is not None and not (
                isinstance(max_shape, list) and len(max_shape) == len(shape) and all(
                    isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 1)
                    for d in max_shape)):
            problems.append(f"{key}[{i}].max_shape must be a list of integers >= 1 (or -1: no "
                            f"maximum) of the tensor's rank {len(shape)}")
            max_shape = None
        out.append(TensorSpec(str(name), str(datatype), tuple(shape),
                              tuple(value_range) if value_range else None,
                              tuple(max_shape) if max_shape else None))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        problems.append(f"'{key}' has duplicate names")
    return tuple(out)


def _refuse_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def load_manifest(context_dir: Path) -> Manifest:
    path = Path(context_dir) / "model" / "manifest.json"
    try:
        # Strict JSON: NaN and Infinity are not numbers (a delay of Infinity would hang the
        # batcher), so they are refused here rather than checked everywhere.
        doc = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise StartupError(f"manifest not found: {path}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise StartupError(f"manifest {path} is unreadable or not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise StartupError(f"manifest {path} must be a JSON object")
    problems: list[str] = []
    for key in ("name", "version", "model_file", "sha256"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            problems.append(f"'{key}' must be a non-empty string")
    # The name and version are path segments of every model route: one that no route can
    # match would start a server nobody can call.
    for key in ("name", "version"):
        value = doc.get(key)
        if isinstance(value, str) and value and not valid_model_name(value):
            problems.append(f"'{key}' {value[:64]!r} cannot appear in a URL path: use letters, "
                            f"digits, '_', '.' and '-' (not '.' or '..')")
    inputs, outputs = _tensors(doc, "inputs", problems), _tensors(doc, "outputs", problems)
    batching = doc.get("batching")
    if batching is None:
        batching = {}
    elif not isinstance(batching, dict):
        problems.append(f"'batching' must be an object with max_batch_size, max_queue_delay_ms "
                        f"and warmup_batch_sizes, not {type(batching).__name__}")
        batching = {}
    mbs = batching.get("max_batch_size", 0)
    delay = batching.get("max_queue_delay_ms", 0.0)
    warm = batching.get("warmup_batch_sizes") or [1]
    if not isinstance(mbs, int) or isinstance(mbs, bool) or mbs < 0:
        problems.append("batching.max_batch_size must be an integer >= 0")
        mbs = 0
    if not _number(delay) or not 0 <= delay <= 10_000:
        problems.append("batching.max_queue_delay_ms must be a number of milliseconds 0-10000")
        delay = 0.0
    if not isinstance(warm, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in warm):
        problems.append("batching.warmup_batch_sizes must be a list of integers >= 1")
        warm = [1]
    if mbs > 0:
        for t in inputs + outputs:
            if not t.shape or t.shape[0] != -1:
                problems.append(f"tensor '{t.name}': with max_batch_size > 0 dimension 0 must be -1")
    limits = doc.get("limits")
    max_elements = None
    if limits is not None:
        max_elements = limits.get("max_request_elements") if isinstance(limits, dict) else "?"
        if max_elements is not None and not (isinstance(max_elements, int) and not isinstance(
                max_elements, bool) and max_elements >= 1):
            problems.append("limits.max_request_elements must be an integer >= 1")
            max_elements = None
    device = doc.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        problems.append(f"device {device!r} must be 'cpu' or 'cuda'")
    model_file = str(doc.get("model_file", ""))
    if "/" in model_file or "\\" in model_file or model_file.startswith("."):
        problems.append(f"model_file {model_file!r} must be a plain file name inside model/")
    if problems:
        raise StartupError(f"manifest {path} is invalid: " + "; ".join(problems))
    return Manifest(name=doc["name"], version=doc["version"],
                    platform=str(doc.get("platform", "onnxruntime_onnx")), device=device,
                    model_file=model_file, sha256=doc["sha256"].lower(), inputs=inputs,
                    outputs=outputs, max_batch_size=mbs, max_queue_delay_ms=float(delay),
                    warmup_batch_sizes=tuple(warm), raw=doc,
                    max_request_elements=max_elements)
