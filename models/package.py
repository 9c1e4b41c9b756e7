"""Step 5, package: the build context of docs/architecture.md, section 2, written atomically.

    <out>/Dockerfile, .dockerignore, requirements.txt, serving/**.py, model/model.onnx,
    model/manifest.json

Nothing time- or host-dependent goes in, so the same inputs give the same bytes. The context
is assembled in a temporary folder next to <out> and renamed into place: a reader never sees
a half-written context.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import BuildError

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
SERVING_DIR = REPO / "serving"
IMAGE_DIR = MODELS_DIR / "image"
MANIFEST_SCHEMA_VERSION = 1
DEVICES = ("cpu", "cuda")
# Tests only: "POINT:SECONDS" makes a build stop for SECONDS at POINT (see pause_for_tests).
TEST_PAUSE_ENV = "SERVEDMODEL_TEST_PAUSE"


def pause_for_tests(point: str) -> None:
    """A hook for tests that interrupt a build at a known point (package-staged: the context is
    staged next to --out; package-swap: an old context is moved aside; cache-staged: a cache
    entry is staged). With SERVEDMODEL_TEST_PAUSE=POINT:SECONDS it says so on stderr and
    sleeps; unset (always, outside tests) it does nothing."""
    point_set, _, seconds = os.environ.get(TEST_PAUSE_ENV, "").partition(":")
    if point_set == point:
        print(f"[test] paused at {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 30))


def runtime_files(device: str) -> dict[str, Path]:
    """Context path -> source file, for everything but the model. Raises FileNotFoundError."""
    dockerfile = IMAGE_DIR / ("Dockerfile.cuda" if device == "cuda" else "Dockerfile")
    requirements = SERVING_DIR / ("requirements-cuda.txt" if device == "cuda" else "requirements.txt")
    files = {"Dockerfile": dockerfile, ".dockerignore": IMAGE_DIR / "dockerignore",
             "requirements.txt": requirements}
    missing = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
               for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing (needed for device={device})")
    for src in sorted(SERVING_DIR.rglob("*.py")):
        if "__pycache__" not in src.parts:
            files[str(Path("serving") / src.relative_to(SERVING_DIR))] = src
    return files


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode()


def content_version(files: dict[str, bytes], manifest: dict[str, Any]) -> str:
    """16 hex characters of a sha256 over every context file and the manifest without
    `version`: everything that changes what is served."""
    return version_from_hashes({path: sha256_bytes(data) for path, data in files.items()}, manifest)


def version_from_hashes(hashes: dict[str, str], manifest: dict[str, Any]) -> str:
    """content_version() from each file's sha256 (the cache checks a stored context with it)."""
    h = hashlib.sha256()
    core = {k: v for k, v in manifest.items() if k != "version"}
    core_digest = sha256_bytes(json.dumps(core, sort_keys=True).encode())
    entries = sorted(hashes.items()) + [("model/manifest.json", core_digest)]
    for path, digest in entries:
        h.update(path.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()[:16]


def make_manifest(*, spec, device: str, model_bytes: bytes, inputs, outputs, compression: str,
                  compression_details: dict, parity: dict, producer: dict,
                  evaluation: dict | None = None) -> dict[str, Any]:
    """The manifest, `version` left empty (filled by `write_context`). Key order is fixed.

    The request bounds a spec declares (input_ranges, input_max_shapes, max_request_elements)
    become each input's `range` / `max_shape` and `limits.max_request_elements`, the keys
    serving/manifest.py reads; a spec without them gives exactly the manifest it gave before."""
    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": spec.name,
        "version": "",
        "platform": "onnxruntime_onnx",
        "device": device,
        "model_file": "model.onnx",
        "sha256": sha256_bytes(model_bytes),
        "size_bytes": len(model_bytes),
        "inputs": [_input_dict(spec, t) for t in inputs],
        "outputs": [t.as_dict() for t in outputs],
        "labels": list(spec.labels) if spec.labels else None,
        "task": spec.task,
        "batching": {"max_batch_size": spec.max_batch_size,
                     "max_queue_delay_ms": float(spec.max_queue_delay_ms),
                     "warmup_batch_sizes": list(spec.warmup_batch_sizes)},
    }
    if spec.max_request_elements is not None:
        manifest["limits"] = {"max_request_elements": int(spec.max_request_elements)}
    manifest.update({
        "compression": {"method": compression, "details": compression_details},
        "parity": parity,
        # The task-quality gate's record (models/evaluate.py); None: no task metric measured.
        "evaluation": evaluation,
        "producer": producer,
    })
    return manifest


def _input_dict(spec, t) -> dict[str, Any]:
    """An input of the manifest: the graph's name, datatype and shape, plus the spec's bounds."""
    d = t.as_dict()
    value_range = (spec.input_ranges or {}).get(t.name)
    if value_range is not None:
        d["range"] = list(value_range)
    max_shape = (spec.input_max_shapes or {}).get(t.name)
    if max_shape is not None:
        if len(max_shape) != len(d["shape"]):
            raise BuildError(spec.name, "package", f"input_max_shapes[{t.name!r}] has {len(max_shape)} "
                             f"dimensions, but the exported input has shape {d['shape']}")
        d["max_shape"] = list(max_shape)
    return d


def _is_replaceable(out: Path) -> bool:
    """--out may be replaced when it does not exist, is empty, or holds a build context."""
    if not out.exists():
        return True
    if not out.is_dir() or out.is_symlink():
        return False
    return not any(out.iterdir()) or (out / "model" / "manifest.json").is_file()


def check_out_dir(model: str, out: Path) -> None:
    """Refuse an --out that is not ours to replace, or that lies inside serving/ or models/:
    the context copies serving/ and the cache key hashes both, so a context there would be
    copied into the next one (and change every key)."""
    resolved = out.resolve()
    for folder in (SERVING_DIR, MODELS_DIR):
        if resolved.is_relative_to(folder):
            raise BuildError(model, "package", f"{out} is inside {folder.name}/, which every build context copies "
                             f"or hashes; a context there would nest into the next build. Choose an --out outside "
                             f"{SERVING_DIR.name}/ and {MODELS_DIR.name}/ (e.g. build/NAME)")
    if not _is_replaceable(out):
        raise BuildError(model, "package", f"{out} exists and is not a build context; refusing to replace it "
                         "(choose an empty or new --out)")


def check_writable(model: str, out: Path) -> None:
    """Fail before the long steps when nothing can be written next to `out` (a read-only
    folder): probe the nearest folder that exists with a temporary folder, creating nothing
    that stays."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)).rmdir()
    except OSError as e:
        raise BuildError(model, "package", f"cannot write the context next to {out}: {e}") from None


def replace_dir(model: str, staged: Path, out: Path) -> None:
    """Move the finished `staged` folder to `out` (same file system), replacing an old context.
    Interrupted or failed at any point, `out` keeps the old context and no temporary folder is
    left (unless even putting the old context back failed: then it stays aside, not lost)."""
    check_out_dir(model, out)
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "context")
            pause_for_tests("package-swap")
        os.replace(staged, out)
    except BaseException:
        if old is not None and (old / "context").exists() and not out.exists():
            os.replace(old / "context", out)
        raise
    finally:
        if old is not None and out.exists():
            shutil.rmtree(old, ignore_errors=True)


def stage_dir(out: Path) -> Path:
    """A temporary folder next to `out`, so that the final rename is atomic."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _publish(model: str, out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a staged folder next to `out`, normalise its modes, then rename it to `out`.

    Writing the new context and materialising a cached one both go through here, so neither
    can leave a half-written folder that looks like a finished context, and whatever stops it
    (an error, Ctrl-C) removes the staged folder."""
    check_out_dir(model, out)
    staged = None
    try:
        staged = stage_dir(out)
        fill(staged)
        # Fixed modes: the bytes and permissions of a context do not depend on the umask.
        for p in [staged, *staged.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        pause_for_tests("package-staged")
        replace_dir(model, staged, out)
    except OSError as e:
        raise BuildError(model, "package", f"writing {out}: {e}") from None
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def write_context(model: str, out: Path, device: str, model_bytes: bytes, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the context to `out` atomically. Returns the manifest with its `version`."""
    try:
        sources = runtime_files(device)
    except FileNotFoundError as e:
        raise BuildError(model, "package", str(e)) from None
    check_out_dir(model, out)
    files = {path: src.read_bytes() for path, src in sources.items()}
    files["model/model.onnx"] = model_bytes
    manifest = dict(manifest)
    manifest["version"] = content_version(files, manifest)
    files["model/manifest.json"] = manifest_bytes(manifest)
    publish_files(model, out, files)
    return manifest


def publish_files(model: str, out: Path, files: dict[str, bytes]) -> None:
    """Write `files` (context path -> bytes) as the context at `out`, atomically (an encrypted
    context too: models/seal.py)."""

    def fill(staged: Path) -> None:
        for path, data in sorted(files.items()):
            dst = staged / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)

    _publish(model, out, fill)


def copy_context(model: str, src: Path, out: Path) -> None:
    """Materialise a cached context at `out`, atomically."""

    def fill(staged: Path) -> None:
        shutil.rmtree(staged)
        shutil.copytree(src, staged, copy_function=shutil.copyfile)

    _publish(model, out, fill)
